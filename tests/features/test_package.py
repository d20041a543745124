"""The conveyor.features package: every public name resolves, and importing it loads no heavy dependency."""

from __future__ import annotations

import subprocess
import sys

import pytest

import conveyor.features


@pytest.mark.parametrize("name", conveyor.features.__all__)
def test_public_name_resolves(name: str) -> None:
    assert getattr(conveyor.features, name) is not None


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'landscape'"):
        conveyor.features.landscape  # noqa: B018


def test_import_loads_neither_sklearn_scipy_nor_gudhi() -> None:
    code = (
        "import sys, conveyor.features, conveyor.features.persistence; "
        "print(sorted(m for m in ('sklearn', 'scipy', 'gudhi') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
