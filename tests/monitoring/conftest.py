"""A trained champion shared by the monitoring tests (training runs once per session, ~10 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.monitoring.settings import MonitoringSettings
from conveyor.training.train import train


def small_settings(home: Path) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (64, 64)},  # type: ignore[arg-type]
        features={"extractors": ["intensity", "stats"]},  # type: ignore[arg-type]
        training={"families": ["logreg"], "extractors": ["intensity"], "cv_folds": 3, "bootstrap": 200},  # type: ignore[arg-type]
    )


def with_monitoring(settings: Settings, **values: Any) -> Settings:
    """``settings`` with these ``monitoring`` settings."""
    return settings.model_copy(update={"monitoring": MonitoringSettings.model_validate(values)})


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """A workspace whose champion (logreg on intensity features) was trained on demo data of seed 3."""
    root = tmp_path_factory.mktemp("monitoring")
    settings = small_settings(root / "ws")
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    ingest(root / "src", settings)
    result = train(settings)
    assert result.alias == "champion"
    return settings, root
