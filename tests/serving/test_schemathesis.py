"""schemathesis against the app's own OpenAPI schema, in process, with valid and invalid requests: no input may
produce a 5xx, and every answer must be one the schema documents, in the shape it documents."""

from __future__ import annotations

import pytest

from conveyor.config import Settings


def test_every_answer_is_documented_and_none_is_a_server_error(settings: Settings) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from conveyor.serving import create_app

    app = create_app(settings)  # the model is loaded by the factory; no lifespan needed for in-process calls
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: set[str] = set()
    for operation in schema.get_all_operations():
        op = operation.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case) -> None:  # type: ignore[no-untyped-def]
                try:
                    # A schema cannot say which bytes are an image: a valid multipart body of noise is rightly 415.
                    case.call_and_validate(excluded_checks=[positive_data_acceptance])
                except Exception as exc:  # schemathesis's FailureGroup: collect, keep generating
                    failures.add(f"{case.method} {case.path}: {str(exc).splitlines()[2:4]}")

            try:
                check()
            except Exception as exc:  # only an operation with no invalid request to generate (a GET without inputs)
                assert "Unable to satisfy assumptions" in str(exc), exc
    assert sorted(failures) == []


def test_a_field_error_is_one_sentence_with_each_problem_listed(client) -> None:  # type: ignore[no-untyped-def]
    from tests.serving.conftest import TOKEN

    response = client.post(
        "/v1/admin/rollout/start", json={"mode": "sideways"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "invalid_request"
    assert body["detail"].startswith("body.mode: Input should be")
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", "mode"], "literal_error")]


def test_a_body_that_cannot_be_parsed_is_a_documented_400(client) -> None:  # type: ignore[no-untyped-def]
    from tests.serving.conftest import TOKEN

    response = client.post(
        "/v1/admin/rollout/start",
        content=b"\x80 not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body", "reason": "malformed_body"}
    documented = client.get("/openapi.json").json()["paths"]["/v1/admin/rollout/start"]["post"]["responses"]
    assert documented["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
