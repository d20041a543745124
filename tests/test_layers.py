"""The import structure: the circles that issue 14 broke stay broken (lint-imports checks the layers between
packages; these pairs were circles inside or across them)."""

from __future__ import annotations

import pytest

PAIRS = [
    ("conveyor.serving.app", "conveyor.serving.routes.predict"),
    ("conveyor.serving.service", "conveyor.serving.scoring"),
    ("conveyor.monitoring.predictions", "conveyor.serving.service"),
]


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    import grimp

    return grimp.build_graph("conveyor")


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_no_two_modules_import_each_other(graph, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    there = graph.find_shortest_chain(importer=first, imported=second)
    back = graph.find_shortest_chain(importer=second, imported=first)
    assert not (there and back), f"{first} and {second} import each other: {there} / {back}"
