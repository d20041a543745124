"""Aliases move only through conveyor, each move is audited, and rollback walks back the champions."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import ConveyorError
from conveyor.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    audit,
    champion_history,
    current_version,
    history,
    list_versions,
    promote,
    rollback,
)
from conveyor.training.train import train
from tests.training.test_train import small_settings


def test_second_model_becomes_challenger_then_promote_and_rollback(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=5))
    ingest(tmp_path / "src", settings)
    first, second = train(settings), train(settings)
    assert (first.alias, second.alias) == (CHAMPION, CHALLENGER)
    assert second.gate.champion_version == 1
    assert [(v.version, v.aliases) for v in list_versions(settings)] == [(2, [CHALLENGER]), (1, [CHAMPION])]

    assert promote(settings, reason="canary passed") == 2
    assert (current_version(settings, CHAMPION), current_version(settings, CHALLENGER)) == (2, None)
    assert champion_history(settings) == [1, 2]

    assert rollback(settings, reason="alerts fired") == 1
    assert current_version(settings, CHAMPION) == 1
    with pytest.raises(ConveyorError, match="no earlier champion"):
        rollback(settings)

    actions = [(r.action, r.details["version"], r.reason) for r in history(settings, settings.model_name)]
    assert actions == [
        ("set_champion", 1, "first model to pass the gate"),
        ("set_challenger", 2, "passed the gate against the champion"),
        ("set_champion", 2, "canary passed"),
        ("set_champion", 1, "alerts fired"),
    ]


def test_promote_without_a_challenger_is_refused(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=6))
    ingest(tmp_path / "src", settings)
    train(settings)
    with pytest.raises(ConveyorError, match="has no challenger to promote"):
        promote(settings)


def test_two_rollbacks_from_the_same_champion_pop_it_once(tmp_path: Path) -> None:
    """Two `conveyor rollback` run at once both read champion 3 and both move the alias to 2: the stack is [1, 2]."""
    settings = small_settings(tmp_path / "ws")
    for version, details in [(1, {}), (2, {}), (3, {}), (2, {"rolled_back_from": 3}), (2, {"rolled_back_from": 3})]:
        audit(settings, f"set_{CHAMPION}", settings.model_name, "test", {"version": version, **details})
    assert champion_history(settings) == [1, 2]
