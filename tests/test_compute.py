"""compute.scheduler: ingest, features and training on a real Dask cluster (a `dask scheduler` and two `dask worker`
processes started here on 127.0.0.1) give the local run's results value for value; a worker killed mid-run loses
and doubles nothing; an unreachable scheduler is a clear error within seconds; SQLite is refused for a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.compute import SchedulerUnreachable, pool
from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import ConfigError
from conveyor.features import store
from conveyor.features.store import compute_features, configured_extractors, read_table, table_for

DASK = str(Path(sys.executable).parent / "dask")


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([DASK, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


class Cluster:
    """A scheduler and its workers, each a process of distributed's own command line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "scheduler.json"
        self.scheduler = _start(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)],
            root / "scheduler.log",
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + 30
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]

    def add_worker(self) -> subprocess.Popen[bytes]:
        worker = _start(
            ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
            self.root / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker

    def wait_for(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=60)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            with_group = process.pid
            try:
                os.killpg(with_group, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    found = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        found.add_worker()
        found.add_worker()
        found.wait_for(2)
        yield found
    finally:
        found.stop()


def _settings(home: Path, **values: object) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (48, 48)},  # type: ignore[arg-type]
        features={"extractors": ["stats", "landscape", "intensity"]},  # type: ignore[arg-type]
        training={
            "families": ["logreg"],
            "extractors": ["stats", "all"],
            "cv_folds": 3,
            "bootstrap": 100,  # type: ignore[arg-type]
            "importance": {"enabled": False},
        },
        **values,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    generate_dataset(root, SyntheticSpec(n_per_class=40, size=64, seed=21))
    return root


def _tables(settings: Settings) -> dict[str, pd.DataFrame]:
    return {e.name: read_table(table_for(settings, e).path).sort_index() for e in configured_extractors(settings)}


def test_features_on_the_cluster_are_the_local_features(
    cluster: Cluster, source: Path, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _settings(tmp_path / "local")
    ingest(source, local)
    compute_features(local, workers=1)
    remote = _settings(tmp_path / "remote", db_url=postgres_url, compute={"scheduler": cluster.address})
    ingest(source, remote)
    monkeypatch.setattr(store, "_CLUSTER_CHUNK", 8)  # ten tasks over two workers
    summary = compute_features(remote)
    assert (summary.computed, summary.failed) == (80, [])
    for name, table in _tables(local).items():
        pd.testing.assert_frame_equal(_tables(remote)[name], table, check_exact=True)


def _images(settings: Settings) -> list[tuple[str, str, str | None, str]]:
    from sqlalchemy import select

    from conveyor.store.db import session_scope
    from conveyor.store.models import Image
    from conveyor.workspace import open_workspace

    with session_scope(open_workspace(settings)) as session:
        rows = session.execute(select(Image.sha256, Image.label, Image.split, Image.phash)).all()
    return sorted((r.sha256, r.label, r.split, r.phash) for r in rows)


def test_ingest_on_the_cluster_stores_what_a_local_ingest_stores(
    cluster: Cluster, source: Path, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.data import ingest as ingest_module

    local = _settings(tmp_path / "local")
    local_summary = ingest(source, local)
    remote = _settings(tmp_path / "remote", db_url=postgres_url, compute={"scheduler": cluster.address})
    monkeypatch.setattr(ingest_module, "_CLUSTER_CHUNK", 16)  # five tasks
    remote_summary = ingest(source, remote)
    assert (remote_summary.stored, remote_summary.quarantined) == (local_summary.stored, local_summary.quarantined)
    assert _images(remote) == _images(local)
    assert sorted(p.name for p in (tmp_path / "remote" / "raw").rglob("*.*")) == sorted(
        p.name for p in (tmp_path / "local" / "raw").rglob("*.*")
    )


def test_training_on_the_cluster_picks_the_local_champion_with_the_same_scores(
    cluster: Cluster, source: Path, tmp_path: Path, postgres_url: str
) -> None:
    from conveyor.training.train import train

    local = _settings(tmp_path / "local")
    ingest(source, local)
    expected = train(local)
    remote = _settings(tmp_path / "remote", db_url=postgres_url, compute={"scheduler": cluster.address})
    ingest(source, remote)
    found = train(remote)
    assert found.best.name == expected.best.name
    assert [(c.name, c.cv_score, c.cv_score_std) for c in found.candidates] == [
        (c.name, c.cv_score, c.cv_score_std) for c in expected.candidates
    ]
    assert found.calibrated.as_dict() == expected.calibrated.as_dict()


def _fits_per_task(keys: list[str]) -> list[tuple[str, int]]:
    """joblib's Dask keys, ``batch_of_<function>_<calls>_calls-<uuid>``: (function, calls) per task."""
    out = []
    for key in keys:
        name, calls = key.split("-")[0].removeprefix("batch_of_").removesuffix("_calls").rsplit("_", 1)
        out.append((name, int(calls)))
    return out


def test_a_forest_fitted_on_the_cluster_grows_its_trees_inside_its_task(
    cluster: Cluster, tmp_path: Path, postgres_url: str
) -> None:
    """joblib's Dask backend ignores a forest's n_jobs=1 (joblib#1013); the search's fits are the only tasks."""
    from distributed import Client, get_task_stream
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from conveyor.compute import joblib_backend
    from conveyor.training.evaluate import Scorer
    from conveyor.training.search import search

    X, y = make_classification(n_samples=90, n_features=6, random_state=0)
    forest = RandomForestClassifier(n_estimators=20, n_jobs=1, random_state=0)
    settings = _settings(tmp_path / "ws", db_url=postgres_url, compute={"scheduler": cluster.address})
    with Client(cluster.address) as client, get_task_stream(client) as stream, joblib_backend(settings):
        found = search("grid", {"forest": (forest, {})}, {"t": X}, y, folds=3, scorer=Scorer("f1", 2, 1), seed=0)
    tasks = _fits_per_task([str(task["key"]) for task in stream.data])
    assert found.fits == 3
    assert {name for name, _ in tasks} == {"_indexed"}  # no task of _parallel_build_trees
    assert sum(calls for _, calls in tasks) == 3


def test_a_cluster_of_one_worker_thread_runs_the_fits_not_the_driver(tmp_path: Path, postgres_url: str) -> None:
    """joblib runs a Parallel whose backend counts one job in the caller: the search's fits must reach the cluster."""
    from distributed import Client, LocalCluster, get_task_stream
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from conveyor.compute import joblib_backend
    from conveyor.training.evaluate import Scorer
    from conveyor.training.search import search

    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as one:
        settings = _settings(tmp_path / "ws", db_url=postgres_url, compute={"scheduler": one.scheduler_address})
        with Client(one.scheduler_address) as client, get_task_stream(client) as stream, joblib_backend(settings):
            found = search("grid", {"lr": (LogisticRegression(), {})}, {"t": X}, y, folds=3,
                           scorer=Scorer("f1", 2, 1), seed=0)  # fmt: skip
    assert found.fits == 3
    assert sum(calls for name, calls in _fits_per_task([str(t["key"]) for t in stream.data]) if name == "_indexed") == 3


def test_the_clusters_workers_keep_megabyte_arrays_on_their_heap(
    cluster: Cluster, tmp_path: Path, postgres_url: str
) -> None:
    """A Dask nanny's MALLOC_TRIM_THRESHOLD_ maps every array over 128 kB afresh (both arrays, in a bare worker);
    conveyor's client gives its workers glibc's thresholds back, so neither is."""
    from conveyor.compute import dask_client

    def _megabyte_arrays_mapped() -> int:
        """How many of two 1 MB arrays, allocated one after the other, glibc gave pages of their own (mmap)."""
        import ctypes

        names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")  # fmt: skip

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in names]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        mapped = 0
        for _ in range(2):
            before = libc.mallinfo2().hblks
            array = np.ones(1 << 20, np.uint8)
            mapped += libc.mallinfo2().hblks - before
            del array
        return int(mapped)

    settings = _settings(tmp_path / "ws", db_url=postgres_url, compute={"scheduler": cluster.address})
    client = dask_client(settings)
    try:
        mapped = client.run(_megabyte_arrays_mapped)
    finally:
        client.close()
    assert len(mapped) == 2 and set(mapped.values()) == {0}


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
    cluster: Cluster, source: Path, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _settings(tmp_path / "local")
    ingest(source, local)
    compute_features(local, workers=1)
    remote = _settings(tmp_path / "remote", db_url=postgres_url, compute={"scheduler": cluster.address})
    ingest(source, remote)
    monkeypatch.setattr(store, "_CLUSTER_CHUNK", 4)  # twenty tasks
    victim = cluster.workers[0]
    killed: list[int] = []

    def kill_once(_done: int) -> None:
        if not killed:
            os.killpg(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    try:
        summary = compute_features(remote, on_progress=kill_once)
    finally:
        cluster.workers.remove(victim)
        cluster.add_worker()  # the next tests get two workers again
        cluster.wait_for(2)
    assert killed and victim.poll() is not None
    assert (summary.computed, summary.failed) == (80, [])
    for name, table in _tables(local).items():
        remote_table = _tables(remote)[name]
        assert remote_table.index.is_unique
        pd.testing.assert_frame_equal(remote_table, table, check_exact=True)
    raw_rows = sum(len(read_table(table_for(remote, e).path)) for e in configured_extractors(remote))
    assert raw_rows == 80 * 3  # no row written twice


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(
    source: Path, tmp_path: Path, postgres_url: str
) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    settings = _settings(tmp_path / "ws", db_url=postgres_url)
    ingest(source, settings)
    unreachable = settings.model_copy(update={"compute": settings.compute.model_copy(
        update={"scheduler": address, "connect_timeout_s": 2.0})})  # fmt: skip
    began = time.monotonic()
    with pytest.raises(
        SchedulerUnreachable, match=f"compute.scheduler {address}: no Dask scheduler answered within 2 s"
    ):
        compute_features(unreachable)
    assert time.monotonic() - began < 15
    assert not any(
        p.name.startswith("stats-") for p in (tmp_path / "ws" / "features").iterdir()
    )  # nothing half-written


def test_a_cluster_with_the_sqlite_metadata_db_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "ws", compute={"scheduler": "tcp://127.0.0.1:8786"})
    with pytest.raises(ConfigError, match="a cluster needs the metadata DB on PostgreSQL"):
        pool(settings, 2)


def test_a_scheduler_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"compute\.scheduler must be 'local' or a Dask address"):
        Settings(compute={"scheduler": "my-cluster"})  # type: ignore[arg-type]


def test_workers_of_a_local_run_stay_numpy_identical(source: Path, tmp_path: Path) -> None:
    """The local pool (two processes) and one process agree: the baseline the cluster is compared with."""
    one = _settings(tmp_path / "one")
    two = _settings(tmp_path / "two")
    for settings in (one, two):
        ingest(source, settings)
    compute_features(one, workers=1)
    compute_features(two, workers=2)
    for name, table in _tables(one).items():
        np.testing.assert_array_equal(_tables(two)[name].to_numpy(), table.to_numpy())
