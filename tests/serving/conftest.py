"""A trained workspace (version 1 champion, version 2 challenger) made once per session, copied per test.

Training twice costs ~20 s, so it runs once for the whole serving suite; each test gets its own copy of the workspace
(metadata DB and registry), so promotions and rollouts in one test never leak into another. The copies share the
original's model artifacts, which are only read.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset, render_slice
from conveyor.serving.settings import ServingSettings
from conveyor.training.train import train
from tests.training.test_train import small_settings

TOKEN = "test-admin-token"
FEEDBACK_TOKENS = {"clinician-a": "feedback-token-a", "clinician-b": "feedback-token-b"}


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    settings = small_settings(root / "ws", conformal={"min_per_class": 5})  # prediction sets on ~6 cases a class
    generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=11))
    ingest(root / "src", settings)
    first, second = train(settings), train(settings)
    assert (first.alias, second.alias) == ("champion", "challenger")
    with sqlite3.connect(root / "ws" / "conveyor.db") as db:  # the copies leave the WAL out: fold it in first
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return root / "ws"


def with_serving(settings: Settings, **serving: Any) -> Settings:
    """``settings`` with these serving settings (tokens of the tests by default)."""
    defaults: dict[str, Any] = {"admin_token": TOKEN, "reload_interval_s": 0, "feedback_tokens": FEEDBACK_TOKENS}
    return settings.model_copy(update={"serving": ServingSettings(**{**defaults, **serving})})


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("mlartifacts", "*-wal", "*-shm"))
    return copy


def settings_for(home: Path, **serving: Any) -> Settings:
    return with_serving(small_settings(home), **serving)


@pytest.fixture
def settings(home: Path) -> Settings:
    return settings_for(home)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from conveyor.serving import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def png(seed: int, size: int = 64, tumour: bool = False) -> bytes:
    pixels = render_slice(np.random.default_rng(seed), size, tumour=tumour)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def clinician(index: int = 0) -> dict[str, str]:
    """The feedback token of one of two clinicians (alternating with ``index``)."""
    tokens = list(FEEDBACK_TOKENS.values())
    return {"Authorization": f"Bearer {tokens[index % len(tokens)]}"}
