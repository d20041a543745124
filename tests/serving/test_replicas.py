"""Serving replicas: two ``conveyor serve`` processes on one PostgreSQL metadata DB and one MLflow store.

A canary rollout is driven by predictions sent alternately to both and feedback sent to both at once (each label
twice, once to each replica): every prediction is logged once, every label stored once, each stage moves once, the
challenger is promoted once, and both replicas end up serving the same champion. The prediction log's retries are
tested apart, on SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conveyor.config import Settings
from conveyor.store.db import create_schema, get_engine, session_scope
from conveyor.store.models import Feedback, Prediction, Rollout
from tests.serving.conftest import FEEDBACK_TOKENS, TOKEN, admin, clinician, png

STAGES = [0.5, 1.0]
MIN_FEEDBACK = 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A workspace trained twice (version 1 champion, version 2 challenger) whose metadata DB is a fresh PostgreSQL
    database (dropped afterwards) and whose MLflow store is the workspace's own, which every replica shares."""
    from tests.conftest import _PG_REASON, PG_SERVER

    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    import uuid

    import psycopg

    from conveyor.data.ingest import ingest
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset
    from conveyor.training.train import train
    from tests.training.test_train import small_settings

    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    url = f"{PG_SERVER}/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        root = tmp_path_factory.mktemp("replicas")
        base = small_settings(root / "ws", conformal={"min_per_class": 5})
        settings = base.model_copy(update={"db_url": url})
        generate_dataset(root / "src", SyntheticSpec(n_per_class=40, size=96, seed=11))
        ingest(root / "src", settings)
        first, second = train(settings), train(settings)
        assert (first.alias, second.alias) == ("champion", "challenger")
        yield settings.home, url
    finally:
        get_engine(url).dispose()
        get_engine.cache_clear()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Replica:
    """One ``python -m conveyor serve`` process on a free port of 127.0.0.1."""

    def __init__(self, home: Path, db_url: str, logs: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "CONVEYOR_HOME": str(home),
            "CONVEYOR_DB_URL": db_url,
            "CONVEYOR_SERVING__ADMIN_TOKEN": TOKEN,
            "CONVEYOR_SERVING__FEEDBACK_TOKENS": json.dumps(FEEDBACK_TOKENS),
            "CONVEYOR_SERVING__FEEDBACK_PER_MINUTE": "100000",
            "CONVEYOR_SERVING__RELOAD_INTERVAL_S": "5",
            "CONVEYOR_SERVING__ROLLOUT__CANARY_STAGES": json.dumps(STAGES),
            "CONVEYOR_SERVING__ROLLOUT__MIN_FEEDBACK": str(MIN_FEEDBACK),
        }
        self.log = logs / f"replica-{self.port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--no-access-log", "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"replica {self.port} exited:\n{self.log.read_text()[-3000:]}"
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"replica {self.port} not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def serving(self) -> dict[str, Any]:
        response = self.client.get("/v1/admin/rollout", headers=admin())
        assert response.status_code == 200, response.text
        return dict(response.json()["serving"])

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully: the prediction log is flushed
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def _predict_alternately(replicas: list[Replica], seeds: range) -> list[dict[str, Any]]:
    def one(i: int) -> dict[str, Any]:
        response = replicas[i % 2].client.post("/v1/predict", content=png(seeds[i]))
        assert response.status_code == 200, response.text
        return dict(response.json())

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(len(seeds))))


def _label_on_both_at_once(replicas: list[Replica], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each answer labelled with its own label (the clinicians agree), sent to both replicas at the same time."""

    def one(job: tuple[int, int]) -> dict[str, Any]:
        n, which = job
        answer = answers[n]
        body = {"request_id": answer["request_id"], "label": answer["label"]}
        response = replicas[which].client.post("/v1/feedback", json=body, headers=clinician(n))
        assert response.status_code == 200, response.text
        return dict(response.json())

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, [(n, which) for n in range(len(answers)) for which in (0, 1)]))


def test_two_replicas_share_the_log_the_feedback_and_the_rollout(pg_home: tuple[Path, str], tmp_path: Path) -> None:
    from conveyor.tracking.registry import CHAMPION, current_version, history

    home, db_url = pg_home
    replicas: list[Replica] = []
    try:
        replicas = [Replica(home, db_url, tmp_path) for _ in range(2)]
        for replica in replicas:
            replica.wait_ready()
        started = replicas[0].client.post("/v1/admin/rollout/start", json={"mode": "canary"}, headers=admin())
        assert started.status_code == 200, started.text
        again = replicas[1].client.post("/v1/admin/rollout/start", json={"mode": "ab"}, headers=admin())
        assert again.status_code == 409  # one rollout at a time, whichever replica is asked
        _until(lambda: replicas[1].serving()["challenger"] == 2, "the other replica sees the rollout")

        # Stage 0 (50%): both arms get labels, on both replicas at once: the stage advances exactly once.
        first = _predict_alternately(replicas, range(2000, 2040))
        assert {a["arm"] for a in first} == {"champion", "challenger"}
        labelled = _label_on_both_at_once(replicas, first)
        moves = [r["rollout"] for r in labelled if r["rollout"] is not None]
        assert [(m["decision"]["action"], m["rollout"]["stage"]) for m in moves] == [("advance", 1)]
        for replica in replicas:
            _until(lambda r=replica: r.serving()["rollout"]["stage"] == 1, f"replica {replica.port} sees stage 1")

        # Stage 1 (100%): every answer is the challenger's; the labels promote it exactly once.
        second = _predict_alternately(replicas, range(3000, 3020))
        assert {a["arm"] for a in second} == {"challenger"}
        labelled = _label_on_both_at_once(replicas, second)
        moves = [r["rollout"] for r in labelled if r["rollout"] is not None]
        assert [(m["decision"]["action"], m["rollout"]["status"]) for m in moves] == [("advance", "promoted")]
        for replica in replicas:
            _until(
                lambda r=replica: (r.serving()["champion"], r.serving()["challenger"]) == (2, None),
                f"replica {replica.port} serves the new champion",
            )
    finally:
        for replica in replicas:
            replica.stop()

    answers = first + second
    engine = get_engine(db_url)
    with session_scope(engine) as session:
        logged = session.execute(select(Prediction.request_id, Prediction.arm)).all()
        labels = dict(session.execute(select(Feedback.request_id, Feedback.label)).all())
        rollouts = session.scalars(select(Rollout)).all()
    assert sorted(logged) == sorted((a["request_id"], a["arm"]) for a in answers)  # each once, none lost
    assert labels == {a["request_id"]: a["label"] for a in answers}  # labelled twice, stored once
    assert len(rollouts) == 1
    decisions = rollouts[0].decisions["items"]
    assert [d["action"] for d in decisions] == ["start", "advance", "promote"]
    assert (rollouts[0].status, rollouts[0].stage, rollouts[0].active_guard) == ("promoted", 1, None)
    assert rollouts[0].ended_at is not None
    settings = Settings(home=home, db_url=db_url)
    audited = [r.action for r in history(settings, settings.model_name)]
    assert [a for a in audited if a.startswith("rollout_")] == ["rollout_start", "rollout_advance", "rollout_promote"]
    moves = [r for r in history(settings, settings.model_name) if r.action == "set_champion" and "rollout" in r.reason]
    assert len(moves) == 1 and moves[0].details["version"] == 2
    assert current_version(settings, CHAMPION) == 2


# ------------------------------------------------------------------------------------------------ prediction log


def _row(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "model_name": "m", "model_version": 1, "arm": "champion", "rollout_id": None,
            "stage": None, "input_sha256": "0" * 64, "format": "png", "width": 64, "height": 64, "brightness": 0.5,
            "contrast": 0.1, "label": "a", "confidence": 0.9, "probabilities": {"a": 0.9, "b": 0.1},
            "latency_ms": 1.0, "error": None}  # fmt: skip


@pytest.fixture
def log_engine(tmp_path: Path) -> Any:
    engine = get_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def _stored(engine: Any) -> list[str]:
    with session_scope(engine) as session:
        return sorted(session.scalars(select(Prediction.request_id)).all())


def test_the_prediction_log_retries_while_the_database_is_away(
    log_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from conveyor.serving import service as service_module
    from conveyor.store import db

    real = db.session_scope
    failures = iter([True, True])

    def flaky(engine: Any) -> Any:
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real(engine)

    monkeypatch.setattr(db, "session_scope", flaky)
    log = service_module.PredictionLog(log_engine, gather_s=0)
    log.retry_pauses = (0.01, 0.01, 0.01)
    for n in range(5):
        log.add(_row(f"r{n}"))
    log.close()
    assert _stored(log_engine) == [f"r{n}" for n in range(5)]


def test_one_bad_row_does_not_take_its_batch_with_it(log_engine: Any) -> None:
    from conveyor.serving.service import PredictionLog

    log = PredictionLog(log_engine, gather_s=0)
    log.add(_row("first"))
    log.flush()
    log.retry_pauses = ()
    for row in (_row("a"), _row("first"), _row("b")):  # "first" again: refused by (request_id, arm), alone
        log.add(row)
    log.close()
    assert _stored(log_engine) == ["a", "b", "first"]
    with session_scope(log_engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 3
