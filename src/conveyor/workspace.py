"""The workspace: one folder holding a project's state (see DESIGN.md), and the lock that serialises writers."""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from conveyor.config import CONFIG_FILE_NAME, Settings
from conveyor.errors import ConveyorError
from conveyor.store.db import create_schema, get_engine

__all__ = [
    "PRIVATE",
    "atomic_write",
    "die_with_parent",
    "exit_with_parent",
    "init_workspace",
    "open_workspace",
    "workspace_lock",
]

_CONFIG_TEMPLATE = """\
# conveyor settings. Every value can also come from the environment: CONVEYOR_<NAME>, nested with __
# (e.g. CONVEYOR_INGEST__MAX_PIXELS=50000000). Commented values are the defaults.
# db_url: postgresql://user@127.0.0.1:5432/conveyor     # default: sqlite file conveyor.db here
# mlflow_tracking_uri: http://127.0.0.1:5000          # default: sqlite file mlflow.db here
# storage:                     # raw store and feature tables; default: here (a shared NFS folder works as a path)
#   url: s3://bucket/conveyor  # any S3-compatible service (s3fs); the embedded MLflow's artifacts go to <url>/mlflow
#   options: {client_kwargs: {endpoint_url: "http://127.0.0.1:9000"}}   # fsspec options; keys from AWS_* variables
# ingest:
#   min_side: 32
#   max_pixels: 100000000
#   max_file_bytes: 1073741824
#   test_fraction: 0.2
#   near_duplicate_bits: 32
#   label_pattern: "[a-z][a-z0-9_]*"   # default none: labels differing only in case, or with markup, are warned about
#   deidentify: false          # true: DICOM stored with the PS3.15 basic profile applied, private elements removed
#   keep_paths: false          # true: source paths stored as they are (default: salted hashes)
# preprocess:
#   grayscale: true
#   trim: true
#   trim_threshold: 0.05
#   size: [128, 128]
#   normalise: minmax          # or percentile
#   percentiles: [1.0, 99.0]
# training:
#   search:
#     mode: race               # what `conveyor train` runs: race | grid | refit | auto
#     retrain_mode: auto       # what a retrain the monitor calls for runs: refit unless the data grew or drifted
#     new_search_share: 0.5    # auto: growth of the training split since the last search that calls for a new one
# serving:
#   feedback_tokens:           # who may label predictions (POST /v1/feedback); none: feedback is off
#     dr-smith: <a long random token: python -c 'import secrets; print(secrets.token_urlsafe(32))'>
"""

_FOLDERS = ("raw", "incoming", "quarantine", "features", "reports", "logs", "mlartifacts")


def init_workspace(settings: Settings) -> Path:
    """Create the workspace folders, a commented ``conveyor.yaml`` and the DB tables; safe to run again. ``raw/`` and
    ``features/`` are made where they are: here, unless ``storage.url`` puts them elsewhere (their writers make the
    folders they need there)."""
    home = settings.home
    elsewhere = {"raw", "features"} if settings.storage.url is not None else set()
    for name in _FOLDERS:
        if name not in elsewhere:
            (home / name).mkdir(parents=True, exist_ok=True)
    config = home / CONFIG_FILE_NAME
    if not config.exists():
        atomic_write(config, _CONFIG_TEMPLATE.encode())
    create_schema(get_engine(settings.resolved_db_url))
    return home


def open_workspace(settings: Settings) -> Engine:
    """The metadata DB engine of an initialised workspace (initialising it on first use)."""
    init_workspace(settings)
    return get_engine(settings.resolved_db_url)


#: The mode of copies of patients' images (raw/ and quarantine/): the owner's only, never wider than an original.
PRIVATE = 0o600


@contextmanager
def atomic_path(path: Path, *, make_parent: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.<name>.<pid>.tmp``) to write to; renamed to ``path`` when the block ends,
    removed if it raises. A reader, or a crash, sees either nothing or the whole file; a killed writer's leftover is
    recognisable by its name."""
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes, *, make_parent: bool = True, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` so that a reader, or a crash, sees either nothing or all of it.

    ``mode`` is created with (the umask still applies): :data:`PRIVATE` for copies of patients' images.
    """
    with atomic_path(path, make_parent=make_parent) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)


_HELD: set[str] = set()  # workspaces whose lock this process holds


@contextmanager
def workspace_lock(home: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the workspace's writer lock, so two ingests never store the same file at once.

    Raises:
        ConveyorError: another process holds it and ``wait`` is false.
    """
    home.mkdir(parents=True, exist_ok=True)
    key = str(home.resolve())
    if key in _HELD:  # POSIX locks do not exclude their own process: guard it here
        raise ConveyorError(f"another conveyor command is writing to the workspace {home}; wait for it to finish")
    # A POSIX record lock (lockf), not flock: it belongs to this process alone, so worker processes forked while it
    # is held do not keep it after this process dies, and the kernel frees it the moment this process is killed.
    with open(home / ".lock", "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConveyorError(
                f"another conveyor command is writing to the workspace {home}; wait for it to finish"
            ) from exc
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.lockf(handle, fcntl.LOCK_UN)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


_WATCHING_PARENT = False


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """In a worker of a pool conveyor does not create (joblib's loky workers of a search): exit as soon as the
    parent process is gone, so a ``conveyor train`` killed with -9 leaves no worker fitting for minutes.

    Linux's parent-death signal (:func:`die_with_parent`) follows the *thread* that started the worker, which loky
    does not keep; a daemon thread that polls the parent's pid does not depend on it. ``parent`` is the pid the
    caller sent the work from, so a worker that only starts watching after its parent died exits at once.
    Idempotent per process. On a Dask worker (``compute.scheduler``) it does nothing: the cluster owns its workers'
    lives, and the caller's pid means nothing on another machine.
    """
    global _WATCHING_PARENT
    if _WATCHING_PARENT or os.getpid() == parent:  # already watching, or running in the caller itself (1 job)
        return
    if _in_dask_worker():
        return
    _WATCHING_PARENT = True
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:  # re-parented: the parent died
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _in_dask_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def die_with_parent() -> None:
    """In a worker process: ask Linux to kill it when its parent dies, so a killed command leaves no orphans.

    Orphaned pool workers would otherwise wait forever on a queue that no one feeds.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        pass
