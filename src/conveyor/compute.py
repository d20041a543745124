"""Where conveyor's heavy work runs: this machine's cores (a process pool, nothing to start) or a Dask cluster.

``compute.scheduler`` picks one. With a Dask scheduler's address (``tcp://host:8786``) ingest's reading, hashing and
decoding, ``conveyor features`` (diagrams and every extractor, in chunks that keep a worker busy for seconds) and
training's fits (joblib's Dask backend) run on the cluster's workers; their results are the local run's, value for
value. Dask reruns the tasks of a worker that dies (``compute.retries``), and the caller writes each result once, so
a lost worker loses and doubles nothing. No scheduler of conveyor's own: the same code reaches a laptop's
``LocalCluster``, SLURM or PBS (dask-jobqueue) and Kubernetes (the Dask operator).

The workers read the source folders the tasks name: on several machines a shared filesystem path that every worker
mounts at the same place (NFS works as it is). The raw store and the feature tables they read and write are those of
``storage.url`` (:mod:`conveyor.storage`): that shared path, or an object store every worker reaches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from conveyor.config import Settings
from conveyor.errors import ConfigError, ConveyorError

__all__ = ["Pool", "dask_client", "in_this_process", "joblib_backend", "pool", "require_cluster_db"]


class SchedulerUnreachable(ConveyorError):
    """The configured Dask scheduler does not answer."""


def require_cluster_db(settings: Settings) -> None:
    """Refuse a cluster with the SQLite metadata DB: workers on other machines and concurrent writers need PostgreSQL.

    Raises:
        ConfigError: ``compute.scheduler`` is a cluster and ``db_url`` is SQLite (or unset).
    """
    if settings.compute.distributed and settings.resolved_db_url.startswith("sqlite"):
        raise ConfigError(
            f"compute.scheduler is {settings.compute.scheduler}: a cluster needs the metadata DB on PostgreSQL "
            "(db_url: postgresql://...), not SQLite"
        )


def dask_client(settings: Settings) -> Any:
    """A connected ``distributed.Client`` for ``compute.scheduler``.

    Raises:
        SchedulerUnreachable: no answer within ``compute.connect_timeout_s``, naming the address.
    """
    from distributed import Client

    address, timeout = settings.compute.scheduler, settings.compute.connect_timeout_s
    try:
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachable(
            f"compute.scheduler {address}: no Dask scheduler answered within {timeout:g} s ({exc})"
        ) from exc
    if settings.compute.worker_malloc == "glibc":
        try:
            client.register_plugin(_glibc_malloc_plugin(), name=WORKER_MALLOC_PLUGIN)
        except BaseException:  # no connection left open behind the error
            client.close()
            raise
    return client


MMAP_THRESHOLD = 32 << 20
"""Bytes from which the workers' allocations get pages of their own: glibc's own ceiling for its adaptive threshold."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Free bytes at the top of a worker's heap before they go back to the system (glibc's adaptive value, then)."""


def glibc_malloc_thresholds() -> bool:
    """Give this process glibc's thresholds for large allocations back (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`); False where the C library has no ``mallopt`` (not glibc).

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which also stops glibc from raising its
    mmap threshold: every array over 128 kB is then mapped and unmapped again, its pages faulted in anew each time.
    The feature extractors and scikit-learn's fits allocate such temporaries per image and per split, and
    ``conveyor features`` on a two-worker cluster took 20-30% more CPU than on the local pool (benchmarks/scale.py),
    about as much as without the variable.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


WORKER_MALLOC_PLUGIN = "conveyor-glibc-malloc"


def _glibc_malloc_plugin() -> Any:
    """A Dask worker plugin that runs :func:`glibc_malloc_thresholds` on every worker, those that join later too
    (made here: ``distributed`` is imported only when a cluster is used)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class GlibcMalloc(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            glibc_malloc_thresholds()

    return GlibcMalloc()


class Pool:
    """Submit functions to the local process pool or the cluster, and collect results as they finish.

    ``share(value)`` makes a large argument (the same for every task) travel once: the cluster scatters it to every
    worker and tasks receive it by reference; locally it is the value itself.
    """

    def __init__(self, settings: Settings, workers: int, initializer: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.client: Any = None
        self.executor: ProcessPoolExecutor | None = None
        self.workers = workers
        self._cluster_size: int | None = None
        if settings.compute.distributed:
            require_cluster_db(settings)
            self.client = dask_client(settings)
        else:
            self.executor = ProcessPoolExecutor(max_workers=workers, initializer=initializer)

    def share(self, value: Any) -> Any:
        if self.client is None:
            return value
        return self.client.scatter(value, broadcast=True, hash=False)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False, retries=self.settings.compute.retries)
        assert self.executor is not None
        return self.executor.submit(fn, *args)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        if self.client is not None:
            from distributed import as_completed as dask_as_completed

            return iter(dask_as_completed(list(futures), loop=self.client.loop))
        return as_completed(list(futures))

    @property
    def size(self) -> int:
        """Workers (processes or Dask worker threads) results can come from at once; the cluster's, asked once (it is
        read for every chunk submitted)."""
        if self.client is not None and self._cluster_size is None:
            self._cluster_size = max(1, sum(self.client.nthreads().values()))
        return self.workers if self._cluster_size is None else self._cluster_size

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pool(settings: Settings, workers: int, initializer: Callable[[], None] | None = None) -> Pool:
    """The pool of ``compute.scheduler``: ``workers`` local processes, or the cluster (its own size).

    Raises:
        SchedulerUnreachable: see :func:`dask_client`.
        ConfigError: see :func:`require_cluster_db`.
    """
    return Pool(settings, workers, initializer)


@contextlib.contextmanager
def joblib_backend(settings: Settings) -> Iterator[None]:
    """Within it, joblib's ``Parallel`` (training's fits) runs on the cluster, when one is configured."""
    if not settings.compute.distributed:
        yield
        return
    import joblib

    require_cluster_db(settings)
    client = dask_client(settings)
    _register_cluster_backend()
    try:
        with joblib.parallel_backend(_CLUSTER_BACKEND, client=client, retries=settings.compute.retries):
            yield
    finally:
        client.close()


_CLUSTER_BACKEND = "conveyor-dask"


@functools.cache
def _register_cluster_backend() -> None:
    """Register joblib's Dask backend under :data:`_CLUSTER_BACKEND`, counting at least two jobs (once a process).

    joblib runs a ``Parallel`` whose backend counts one job in the calling process, without the backend: on a
    cluster of one worker thread the search's fits ran in the driver, not on the cluster it names. Counting two
    sends them to the cluster, where the one thread takes them in turn.
    """
    import joblib
    from joblib._dask import DaskDistributedBackend

    class ClusterBackend(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(2, int(super().effective_n_jobs(n_jobs)))

    joblib.register_parallel_backend(_CLUSTER_BACKEND, ClusterBackend)


def in_this_process() -> contextlib.AbstractContextManager[Any]:
    """Within it, an estimator's own joblib loops (a random forest's trees) run in this process, as its ``n_jobs`` says.

    A task of joblib's Dask backend runs under that backend, which ignores ``n_jobs`` (joblib#1013): a forest with
    ``n_jobs=1`` fitted in a task sends its trees back to the cluster as tasks of their own, four times slower per
    fit (benchmarks/scale.py). A task of the local pool gets the same threads, so both run one fit the same way.
    """
    import joblib

    return joblib.parallel_config(backend="threading")
