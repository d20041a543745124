"""storage.url on an object store: moto's standalone S3 server (a real HTTP S3 API, started here on 127.0.0.1) holds
the raw store, the feature tables, the diagram cache and MLflow's artifacts. Ingest, features and training through
it give the local run's results value for value; a store that cannot be reached is a clear error within seconds,
before anything is written; an upload killed half-way leaves nothing that counts as present."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.data.versions import raw_images
from conveyor.features import store
from conveyor.features.store import compute_features, configured_extractors, diagrams_dir, read_table, table_for
from conveyor.storage import Storage, StorageError

BUCKET = "conveyor-test"
KEYS = {"key": "testing", "secret": "testing"}  # moto takes any credentials


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Moto:
    """moto's standalone server (``python -m moto.server``), a process of its own on a free loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", "127.0.0.1"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        self.client = self._client()
        self.client.create_bucket(Bucket=BUCKET)

    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=KEYS["key"], aws_secret_access_key=KEYS["secret"],
        )  # fmt: skip

    def options(self, endpoint: str | None = None) -> dict[str, Any]:
        return {**KEYS, "client_kwargs": {"endpoint_url": endpoint or self.endpoint, "region_name": "us-east-1"}}

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix`` of the bucket, with its bytes, read without conveyor."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for entry in page.get("Contents", []):
                out[entry["Key"]] = self.client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def environ() -> Iterator[None]:
    """The process environment as it was, after the test (MLflow's S3 client reads its endpoint and keys there)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _settings(
    home: Path, url: str | Path | None = None, options: dict[str, Any] | None = None, **values: Any
) -> Settings:
    storage = {} if url is None else {"url": str(url), "options": options or {}, "check_timeout_s": 2.0}
    return Settings(
        home=home,
        preprocess={"size": (48, 48)},  # type: ignore[arg-type]
        features={"extractors": ["stats", "landscape", "intensity"]},  # type: ignore[arg-type]
        training={
            "families": ["logreg"], "extractors": ["stats"], "cv_folds": 3, "bootstrap": 100,
            "importance": {"enabled": False}, "stacking": False,
        },  # type: ignore[arg-type]
        storage=storage,  # type: ignore[arg-type]
        **values,
    )  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    generate_dataset(root, SyntheticSpec(n_per_class=30, size=64, seed=21))
    return root


@pytest.fixture(scope="module")
def local(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The reference: the same images ingested into a workspace on this disk, their features computed."""
    settings = _settings(tmp_path_factory.mktemp("local") / "ws")
    ingest(source, settings)
    compute_features(settings, workers=1)
    return settings


def _images(settings: Settings) -> list[tuple[str, str, str | None, str]]:
    from sqlalchemy import select

    from conveyor.store.db import session_scope
    from conveyor.store.models import Image
    from conveyor.workspace import open_workspace

    with session_scope(open_workspace(settings)) as session:
        rows = session.execute(select(Image.sha256, Image.label, Image.split, Image.raw_path)).all()
    return sorted((r.sha256, r.label, r.split, r.raw_path) for r in rows)


def _tables(settings: Settings) -> dict[str, pd.DataFrame]:
    return {e.name: read_table(table_for(settings, e)).sort_index() for e in configured_extractors(settings)}


def _whole(objects: dict[str, bytes]) -> None:
    """Every object of the raw store holds the bytes its name says (``<sha256>.<ext>``)."""
    for key, data in objects.items():
        assert hashlib.sha256(data).hexdigest() == Path(key).stem, key


def test_ingest_puts_each_image_once_in_the_bucket_where_its_row_points(
    moto: Moto, source: Path, local: Settings, tmp_path: Path
) -> None:
    remote = _settings(tmp_path / "ws", f"s3://{BUCKET}/ingest", moto.options())
    summary = ingest(source, remote)
    assert (summary.seen, summary.stored, summary.duplicates, summary.quarantined) == (60, 60, 0, 0)
    objects = moto.objects("ingest/raw/")
    rows = _images(remote)
    assert sorted(objects) == sorted(f"ingest/{raw_path}" for *_, raw_path in rows)
    _whole(objects)
    assert rows == _images(local)  # the same shas, labels, splits and paths as on this disk
    assert not (tmp_path / "ws" / "raw").exists()  # nothing of it on the driver's disk

    shutil.copytree(source, tmp_path / "again")  # the same images from another folder
    again = ingest(tmp_path / "again", remote)
    assert (again.seen, again.stored, again.duplicates) == (60, 0, 60)
    assert sorted(moto.objects("ingest/raw/")) == sorted(objects)


def test_features_from_the_bucket_are_the_local_features(
    moto: Moto, source: Path, local: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _settings(tmp_path / "ws", f"s3://{BUCKET}/feat", moto.options())
    ingest(source, remote)
    monkeypatch.setattr(store, "_CHUNK", 16)  # four chunks over two worker processes, each reading the bucket
    summary = compute_features(remote, workers=2)
    assert (summary.computed, summary.diagrams_computed, summary.failed) == (60, 60, [])
    assert summary.tables["stats"]["path"] == f"s3://{BUCKET}/feat/{table_for(remote, make('stats')).parts.folder}"
    for name, table in _tables(local).items():
        pd.testing.assert_frame_equal(_tables(remote)[name], table, check_exact=True)
    keys = moto.objects("feat/features/")
    assert {Path(k).parent.name.split("-")[0] for k in keys} == {"stats", "landscape", "intensity", "diagrams"}
    assert not (tmp_path / "ws" / "features").exists()

    cached = read_table(diagrams_dir(remote))
    assert len(cached) == 60
    again = compute_features(remote, workers=1)  # everything is in the bucket: nothing computed again
    assert (again.computed, again.cached) == (0, 60)


def make(name: str) -> Any:
    from conveyor.features.extractors import make_extractor

    return make_extractor(name)


@pytest.mark.slow
def test_training_keeps_its_artifacts_in_the_bucket_and_the_registered_model_answers(
    moto: Moto, source: Path, tmp_path: Path, environ: None
) -> None:
    from conveyor.features.store import load_matrix
    from conveyor.serving.models import load_version
    from conveyor.training.train import train

    remote = _settings(tmp_path / "ws", f"s3://{BUCKET}/train", moto.options())
    ingest(source, remote)
    result = train(remote)
    assert result.registered_version == 1
    artifacts = {Path(key).name for key in moto.objects("train/mlflow/")}
    assert {"classifier.joblib", "spec.json", "MLmodel"} <= artifacts
    assert not [p for p in (tmp_path / "ws" / "mlartifacts").rglob("*") if p.is_file()]

    model = load_version(remote, 1).model  # downloaded from the bucket, its hashes checked
    features, _ = load_matrix(remote, model.spec.extractor, split="test")
    shas = list(features.index)
    from_bytes = model.predict_images([model.image(data) for data in raw_images(remote, shas).read_all(shas)])
    np.testing.assert_allclose(from_bytes, model.predict_features(features.to_numpy()), atol=1e-12)
    assert from_bytes.shape == (12, 2)


def _run(command: str, settings: Settings, source: Path) -> Any:
    from conveyor.training.train import train

    commands: dict[str, Callable[[], Any]] = {
        "ingest": lambda: ingest(source, settings),
        "features": lambda: compute_features(settings),
        "train": lambda: train(settings),
    }
    return commands[command]()


@pytest.mark.parametrize("command", ["ingest", "features", "train"])
def test_an_endpoint_that_does_not_answer_is_a_clear_error_within_seconds(
    command: str, source: Path, tmp_path: Path
) -> None:
    port = _free_port()  # nothing listens there
    settings = _settings(tmp_path / "ws", f"s3://{BUCKET}/down", {**KEYS, "endpoint_url": f"http://127.0.0.1:{port}"})
    began = time.monotonic()
    expected = f"storage.url s3://{BUCKET}/down: the endpoint http://127.0.0.1:{port} does not answer"
    with pytest.raises(StorageError, match=re.escape(expected)):
        _run(command, settings, source)
    assert time.monotonic() - began < 10
    assert not (tmp_path / "ws").exists()  # not even the workspace: nothing written


def test_a_missing_bucket_is_a_clear_error_and_nothing_is_written(moto: Moto, source: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path / "ws", "s3://no-such-bucket/conveyor", moto.options())
    with pytest.raises(StorageError, match=r"^storage.url s3://no-such-bucket/conveyor: the bucket 'no-such-bucket' "):
        ingest(source, settings)
    assert [b["Name"] for b in moto.client.list_buckets()["Buckets"]] == [BUCKET]
    assert not (tmp_path / "ws").exists()


def test_no_credentials_is_a_clear_error(
    moto: Moto, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata service asked either
    settings = _settings(tmp_path / "ws", f"s3://{BUCKET}/nokeys", {"endpoint_url": moto.endpoint})
    began = time.monotonic()
    with pytest.raises(StorageError, match=f"storage.url s3://{BUCKET}/nokeys: no credentials: set storage.options"):
        ingest(source, settings)
    assert time.monotonic() - began < 10
    assert not (tmp_path / "ws").exists()


class StallingProxy:
    """A loopback TCP proxy in front of moto that relays everything until the body of the ``after``-th PUT is half
    sent, then relays nothing more: a writer caught in the middle of an upload, there to be killed."""

    def __init__(self, upstream: int, after: int) -> None:
        self.upstream, self.after = upstream, after
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.puts = 0
        self.cut = threading.Event()
        self.cut_request = ""
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._to_server, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _to_client(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass

    def _to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        head, body_left, body_len, half, request = b"", 0, 0, -1, ""
        try:
            while data := client.recv(65536):
                while data and not self.cut.is_set():
                    if body_left == 0:  # a request's head
                        head += data
                        end = head.find(b"\r\n\r\n")
                        if end < 0:
                            upstream.sendall(data)
                            break
                        used = len(data) - (len(head) - end - 4)
                        upstream.sendall(data[:used])
                        data = data[used:]
                        lines = head[:end].decode("latin-1").split("\r\n")
                        head, request = b"", lines[0]
                        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
                        body_len = body_left = int(fields.get("content-length", "0"))
                        half = -1
                        if request.startswith("PUT ") and body_len > 0:
                            with self.lock:
                                self.puts += 1
                                half = body_len // 2 if self.puts == self.after else -1
                    else:
                        take = min(len(data), body_left)
                        sent = body_len - body_left
                        if 0 <= half < sent + take:
                            upstream.sendall(data[: half - sent])
                            self.cut_request = request
                            self.cut.set()
                            break
                        upstream.sendall(data[:take])
                        data, body_left = data[take:], body_left - take
        except OSError:
            pass
        finally:  # the writer is gone: so is its half-sent request
            for sock in (upstream, client):
                sock.close()

    def close(self) -> None:
        self.server.close()


def test_an_upload_killed_half_way_leaves_nothing_half_present(moto: Moto, source: Path, tmp_path: Path) -> None:
    """``conveyor ingest`` into the bucket, killed (SIGKILL) while its third upload is half sent: no object is half
    there, every object holds the bytes its name says, every row points at a whole object, and the next ingest
    completes the store."""
    proxy = StallingProxy(moto.port, after=3)
    home = tmp_path / "ws"
    env = {
        **os.environ,
        "CONVEYOR_HOME": str(home),
        "CONVEYOR_STORAGE__URL": f"s3://{BUCKET}/killed",
        "CONVEYOR_STORAGE__OPTIONS": json.dumps(moto.options(f"http://127.0.0.1:{proxy.port}")),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    writer = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "ingest", str(source), "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert proxy.cut.wait(60), f"no third upload: {writer.stderr.read().decode() if writer.poll() else ''}"
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        proxy.close()
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)
    half_sent = re.match(rf"PUT /{BUCKET}/(\S+?)(\?\S*)? HTTP", proxy.cut_request)
    assert half_sent is not None and half_sent.group(1).startswith("killed/raw/"), proxy.cut_request
    time.sleep(0.5)  # moto sees the connection drop and refuses the request
    objects = moto.objects("killed/raw/")
    assert half_sent.group(1) not in objects
    _whole(objects)
    assert len(objects) < 60
    stored_before = [raw_path for *_, raw_path in _images(_settings(home))]
    assert {f"killed/{p}" for p in stored_before} <= set(objects)  # a row only ever points at a whole object

    resumed = ingest(source, _settings(home, f"s3://{BUCKET}/killed", moto.options()))
    assert (resumed.seen, resumed.stored + resumed.duplicates, resumed.quarantined) == (60, 60, 0)
    objects = moto.objects("killed/raw/")
    _whole(objects)
    assert sorted(objects) == sorted(f"killed/{raw_path}" for *_, raw_path in _images(_settings(home)))
    assert len(objects) == 60


@pytest.mark.slow
def test_a_clusters_workers_write_and_read_the_bucket_not_the_drivers_disk(
    moto: Moto, source: Path, local: Settings, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compute.scheduler and storage.url together: ingest's workers put the images in the bucket, the feature workers
    read them from there, and the tables are the local run's."""
    from distributed import LocalCluster

    from conveyor.data import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_CLUSTER_CHUNK", 16)
    monkeypatch.setattr(store, "_CLUSTER_CHUNK", 16)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = _settings(
            tmp_path / "ws", f"s3://{BUCKET}/cluster", moto.options(),
            db_url=postgres_url, compute={"scheduler": cluster.scheduler_address},
        )  # fmt: skip
        assert ingest(source, remote).stored == 60
        summary = compute_features(remote)
    assert (summary.computed, summary.failed) == (60, [])
    assert len(moto.objects("cluster/raw/")) == 60
    assert not (tmp_path / "ws" / "raw").exists()
    for name, table in _tables(local).items():
        pd.testing.assert_frame_equal(_tables(remote)[name], table, check_exact=True)


def test_a_shared_folder_works_as_a_path(source: Path, local: Settings, tmp_path: Path) -> None:
    """An NFS mount is a folder: the store goes there, with the workspace's file modes, and gives the same tables."""
    shared = _settings(tmp_path / "ws", tmp_path / "nfs" / "conveyor")
    ingest(source, shared)
    compute_features(shared, workers=1)
    copies = sorted((tmp_path / "nfs" / "conveyor" / "raw").rglob("*.png"))
    assert len(copies) == 60 and {p.stat().st_mode & 0o777 for p in copies} == {0o600}
    assert not (tmp_path / "ws" / "raw").exists()
    for name, table in _tables(local).items():
        pd.testing.assert_frame_equal(_tables(shared)[name], table, check_exact=True)


def test_a_store_travels_as_its_url_and_options_and_never_shows_them() -> None:
    storage = Storage("s3://bucket/prefix/", {"key": "id", "secret": "hush"})
    assert (storage.url, storage.bucket, storage.url_of("raw/ab/x.png")) == (
        "s3://bucket/prefix", "bucket", "s3://bucket/prefix/raw/ab/x.png",
    )  # fmt: skip
    copy = pickle.loads(pickle.dumps(storage))
    assert (copy.url, copy.options) == (storage.url, storage.options)
    assert "hush" not in repr(storage)
    assert storage.mlflow_environment() == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "hush"}


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_a_url_without_a_bucket_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="names no bucket or container"):
        Settings(storage={"url": url})  # type: ignore[arg-type]


def test_a_local_write_remakes_a_folder_removed_since_this_process_made_it(tmp_path: Path) -> None:
    """A long-lived process (a server, a benchmark) whose store folder was removed under it still writes."""
    storage = Storage(tmp_path / "store")
    storage.write_bytes("features/t/table.json", b"one")
    shutil.rmtree(tmp_path / "store" / "features")
    storage.write_bytes("features/t/table.json", b"two")
    assert (tmp_path / "store" / "features" / "t" / "table.json").read_bytes() == b"two"
