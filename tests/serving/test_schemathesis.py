"""schemathesis against the app's own OpenAPI schema, in process: no input may produce a 5xx."""

from __future__ import annotations

import pytest

from conveyor.config import Settings


def test_no_input_produces_a_server_error(settings: Settings) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings

    from conveyor.serving import create_app

    app = create_app(settings)  # the model is loaded by the factory; no lifespan needed for in-process calls
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @given(case=op.as_strategy())
        @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")

        check()
    assert failures == []
