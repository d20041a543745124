"""The feature store: one master table per extractor, and a cache of persistence diagrams.

Layout under ``features/`` in the store (the workspace, or the folder or object store of ``storage.url``)::

    diagrams-<preprocess hash>-v<diagram version>/part-*.parquet     sha256 + the four diagrams of each image
    <extractor>-<extractor hash>-<preprocess hash>/table.json        extractor and preprocessing config, columns
    <extractor>-<extractor hash>-<preprocess hash>/part-*.parquet    sha256 + one column per feature

    <extractor>-<extractor hash>-<preprocess hash>-roi-<region key>/...  the same, inside a region (features.roi)
    diagrams-<preprocess hash>-roi-<region key>-v<diagram version>/...

A master table's folder name carries the hash of its extractor's config and of the preprocessing config (and the key
of the region it was computed in), so a changed config starts a new table and old and new features never mix. Tables
grow by appending part files, each written whole (a local file renamed into place, an object in one upload): a run
killed at any point leaves whole parts, and the next run computes only what is missing. Reading a table takes the
last row of each sha256, so a part written twice (a kill between a write and a compaction) is harmless.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from conveyor import compute
from conveyor.config import PreprocessSettings, Settings
from conveyor.data.versions import dataset_members
from conveyor.errors import ConfigError, InvalidImageError, NotFoundError
from conveyor.features.extractors import EXTRACTORS, make_extractor
from conveyor.features.persistence import BUNDLE_KEYS, DIAGRAM_VERSION, DiagramBundle
from conveyor.features.pipeline import FeaturePipeline, Region
from conveyor.storage import FEATURES, Storage
from conveyor.store.db import session_scope
from conveyor.store.models import Image
from conveyor.workspace import available_cores, die_with_parent, open_workspace, workspace_lock

__all__ = [
    "ROI_PREFIX",
    "FeatureSummary",
    "FeatureTable",
    "Parts",
    "compute_features",
    "configured_extractors",
    "load_matrix",
    "read_table",
]

ROI_PREFIX = "roi-"
"""Training's name of an extractor's table computed inside the region (``roi-stats``, ``roi-all``)."""

_CHUNK = 64  # images per worker task
_CLUSTER_CHUNK = 512  # ... on a Dask cluster: seconds of work per task, so scheduling costs little
_PART_ROWS = 2048  # feature rows buffered before a part file is written
_DIAGRAM_PART_ROWS = 256  # diagram rows (thousands of bars each for noisy images) buffered before a part
_COMPACT_AFTER = 16  # parts in a table before they are merged into one


@dataclass(frozen=True)
class Parts:
    """A folder of Parquet parts in the store (a master table, or the diagram cache)."""

    storage: Storage
    folder: str  # relative to the store, e.g. features/stats-<hash>-<hash>

    @property
    def path(self) -> Path:
        """The folder's local path (a local store only; see :meth:`conveyor.storage.Storage.path`)."""
        return self.storage.path(self.folder)

    @property
    def url(self) -> str:
        return self.storage.url_of(self.folder)

    def names(self) -> list[str]:
        """The parts, oldest first (their names begin with the time they were written)."""
        return self.storage.list(self.folder, "part-*.parquet")

    def read_part(
        self, relative: str, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
    ) -> pa.Table:
        if self.storage.local:
            return pq.read_table(self.storage.path(relative), columns=columns, schema=schema)
        with self.storage.open(relative) as handle:  # the footer and the columns asked for: byte ranges
            return pq.read_table(handle, columns=columns, schema=schema)

    def read_schema(self, relative: str) -> pa.Schema:
        if self.storage.local:
            return pq.read_schema(self.storage.path(relative))
        with self.storage.open(relative) as handle:
            return pq.read_schema(handle)


@dataclass(frozen=True)
class FeatureTable:
    """One master table: where it lives and what made it."""

    name: str
    extractor_hash: str
    preprocess_hash: str
    parts: Parts

    @property
    def key(self) -> str:
        return PurePosixPath(self.parts.folder).name

    @property
    def path(self) -> Path:
        """The table's local folder (a local store only)."""
        return self.parts.path

    @property
    def url(self) -> str:
        """Where the table is: a folder's path or an object store's URL."""
        return self.parts.url


@dataclass
class FeatureSummary:
    """What one ``conveyor features`` run did. ``computed``: images whose features this run computed; ``cached``:
    images already complete in every table (of the whole image; ``roi`` counts the same inside the region, when one
    is configured). ``tables`` is keyed by the extractor's name, ``roi-<name>`` for a region's table."""

    computed: int = 0
    cached: int = 0
    diagrams_computed: int = 0
    diagrams_cached: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    roi: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "computed": self.computed,
            "cached": self.cached,
            "diagrams_computed": self.diagrams_computed,
            "diagrams_cached": self.diagrams_cached,
            "failed": self.failed,
            "tables": self.tables,
            "roi": self.roi,
        }


def configured_extractors(settings: Settings) -> list[Any]:
    """The extractors the settings ask for, unfitted, in the settings' order.

    Raises:
        ConfigError: an unknown extractor name, a bad parameter, or grids learned from data (those belong inside a
            fitted model, not in a shared table).
    """
    extractors = []
    for name in settings.features.extractors:
        if name not in EXTRACTORS:
            raise ConfigError(f"features.extractors: unknown extractor {name!r}, expected some of {sorted(EXTRACTORS)}")
        params = settings.features.params.get(name, {})
        try:
            extractor = make_extractor(name, **params)
        except ValueError as exc:
            raise ConfigError(f"features.params.{name}: {exc}") from exc
        if getattr(extractor, "fit_grids", False):
            raise ConfigError(
                f"features.params.{name}.fit_grids: a master table needs fixed grids; fitted grids live in the model"
            )
        extractors.append(extractor)
    return extractors


def table_for(settings: Settings, extractor: Any, region_key: str | None = None) -> FeatureTable:
    """The master table of ``extractor`` under the workspace's preprocessing config (inside a region, if keyed)."""
    ehash, phash = extractor.config_hash()[:12], settings.preprocess.config_hash()
    suffix = "" if region_key is None else f"-{ROI_PREFIX}{region_key}"
    folder = f"{FEATURES}/{extractor.name}-{ehash}-{phash}{suffix}"
    return FeatureTable(extractor.name, ehash, phash, Parts(Storage.of(settings), folder))


def diagrams_dir(settings: Settings, region_key: str | None = None) -> Parts:
    """The diagram cache of the workspace's preprocessing (inside a region, if keyed)."""
    suffix = "" if region_key is None else f"-{ROI_PREFIX}{region_key}"
    folder = f"{FEATURES}/diagrams-{settings.preprocess.config_hash()}{suffix}-v{DIAGRAM_VERSION}"
    return Parts(Storage.of(settings), folder)


def _parts_of(table: FeatureTable | Parts | Path) -> Parts:
    if isinstance(table, FeatureTable):
        return table.parts
    if isinstance(table, Parts):
        return table
    return Parts(Storage(table), "")  # a local folder, as earlier callers name a table


def read_table(table: FeatureTable | Parts | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A master table (or the diagram cache) as a DataFrame indexed by sha256; empty if it has no parts yet.

    ``table``: a :class:`FeatureTable` (:func:`table_for`), a :class:`Parts` folder, or a local table's folder.
    """
    parts = _parts_of(table)
    names = parts.names()
    if not names:
        return pd.DataFrame(index=pd.Index([], name="sha256"))
    wanted = None if columns is None else ["sha256", *columns]
    frame = pd.concat([parts.read_part(name, wanted).to_pandas() for name in names], ignore_index=True)
    return frame.drop_duplicates("sha256", keep="last").set_index("sha256")


def _stored_shas(parts: Parts) -> set[str]:
    return {sha for name in parts.names() for sha in parts.read_part(name, ["sha256"]).column("sha256").to_pylist()}


def _part_name() -> str:
    return f"part-{pd.Timestamp.now('UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"


def _write_part(parts: Parts, frame: pa.Table) -> None:
    """Write one part whole (a temporary file renamed, or uploaded in one piece)."""
    with parts.storage.writing(f"{parts.folder}/{_part_name()}") as tmp:
        pq.write_table(frame, tmp, compression="zstd")


def _compact(parts: Parts) -> None:
    """Merge a table's parts into one once there are many, streaming one part at a time (memory stays flat).

    The merged part is written (whole) before the old ones are removed; a kill in between leaves rows twice, which
    :func:`read_table` resolves by keeping the last.
    """
    names = parts.names()
    if len(names) < _COMPACT_AFTER:
        return
    schema = parts.read_schema(names[0])
    with (
        parts.storage.writing(f"{parts.folder}/{_part_name()}") as tmp,
        pq.ParquetWriter(tmp, schema, compression="zstd") as writer,
    ):
        for name in names:
            writer.write_table(parts.read_part(name, schema=schema))
    parts.storage.remove(names)


def _write_table_info(
    table: FeatureTable, extractor: Any, columns: list[str], preprocess: PreprocessSettings, region_key: str | None
) -> None:
    info = f"{table.parts.folder}/table.json"
    storage = table.parts.storage
    if storage.exists(info):
        return
    payload = {
        "extractor": extractor.config(),
        "region": region_key,
        "extractor_hash": table.extractor_hash,
        "preprocess": preprocess.model_dump(mode="json"),
        "preprocess_hash": table.preprocess_hash,
        "description": (type(extractor).__doc__ or "").strip().split("\n\n")[0],
        "key": "sha256 of the image's bytes",
        "columns": columns,
    }
    storage.write_bytes(info, json.dumps(payload, indent=2).encode())


def _bundles_table(shas: list[str], bundles: list[DiagramBundle]) -> pa.Table:
    """Diagram bundles as an Arrow table: one list<double> column per (filtration, dim), (birth, death) flattened.

    Built from flat numpy values and offsets: going through Python floats cost gigabytes for noisy images.
    """
    columns: dict[str, pa.Array] = {"sha256": pa.array(shas, type=pa.string())}
    for filtration, dim in BUNDLE_KEYS:
        flat = [np.ascontiguousarray(b[(filtration, dim)], dtype=np.float64).ravel() for b in bundles]
        offsets = np.zeros(len(flat) + 1, dtype=np.int64)
        np.cumsum([a.size for a in flat], out=offsets[1:])
        values = np.concatenate(flat) if flat else np.empty(0, dtype=np.float64)
        columns[f"{filtration}_h{dim}"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table(columns)


def _row_bundle(row: pd.Series) -> DiagramBundle:
    return {
        (filtration, dim): np.asarray(row[f"{filtration}_h{dim}"], dtype=np.float64).reshape(-1, 2)
        for filtration, dim in BUNDLE_KEYS
    }


@dataclass
class _ChunkResult:
    shas: list[str]
    bundles: dict[str, DiagramBundle]  # newly computed diagrams
    features: dict[str, np.ndarray]  # extractor name -> (len(shas), n_features)
    columns: dict[str, list[str]]
    failed: list[tuple[str, str]]


def _compute_chunk(
    storage: Storage,
    rows: list[tuple[str, str]],
    preprocess: dict[str, Any],
    specs: list[tuple[str, dict[str, Any]]],
    cached: dict[str, DiagramBundle],
    region: Region | None = None,
) -> _ChunkResult:
    """Decode, preprocess, take diagrams (unless cached) and vectorise one chunk of images; runs in a worker, which
    reads the images' bytes from the store (all of the chunk's at once: an object store sends them concurrently)."""
    pipeline = FeaturePipeline(PreprocessSettings(**preprocess), specs, region=region)
    shas: list[str] = []
    images: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    blobs = storage.read_many(raw_path for _, raw_path in rows)
    for sha, raw_path in rows:
        try:
            data = blobs[raw_path]
            if isinstance(data, Exception):
                raise data
            images.append(pipeline.image(data))
            shas.append(sha)
        except (OSError, InvalidImageError) as exc:
            failed.append((sha, f"{raw_path}: {exc}"))
    prepared = pipeline.prepare(images, [cached.get(sha) for sha in shas])
    pairs = zip(shas, prepared.bundles, strict=True) if prepared.bundles else ()  # no bundles: no extractor reads them
    new = {sha: bundle for sha, bundle in pairs if sha not in cached}
    features = pipeline.transform(prepared)
    return _ChunkResult(shas, new, features, pipeline.columns(), failed)


def compute_features(
    settings: Settings,
    *,
    region: Region | None = None,
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> FeatureSummary:
    """Compute every configured extractor's features for every stored image that lacks them; with a ``region``, also
    inside it, in tables of their own (``features.roi``; the caller draws the region, see
    :func:`conveyor.training.segmentation.feature_region`).

    Work is spread over ``workers`` processes (default: every core), in chunks, and written in parts as it comes, so
    memory stays flat however many images there are. A second run finds nothing missing and computes nothing.

    Raises:
        ConfigError: see :func:`configured_extractors`.
        StorageError: the store of ``storage.url`` cannot be reached (before anything is written).
    """
    extractors = configured_extractors(settings)
    Storage.of(settings).check(settings.storage.check_timeout_s)
    engine = open_workspace(settings)
    summary = FeatureSummary()
    with workspace_lock(settings.home):
        with session_scope(engine) as session:
            images = [(r.sha256, r.raw_path) for r in session.execute(select(Image.sha256, Image.raw_path))]
        passes = [None] if region is None else [None, region]
        totals = [_missing(settings, extractors, images, r) for r in passes]
        if on_start is not None:
            on_start(sum(len(todo) for todo, _ in totals))
        for where, (todo, have) in zip(passes, totals, strict=True):
            done = summary if where is None else FeatureSummary()
            _compute_tables(settings, extractors, where, todo, have, done, workers, on_progress)
            done.cached = len(images) - len(todo)
            if where is not None:
                known = {row["sha256"] for row in summary.failed}
                summary.failed += [row for row in done.failed if row["sha256"] not in known]
                summary.tables.update({f"{ROI_PREFIX}{name}": info for name, info in done.tables.items()})
                counts = ("computed", "cached", "diagrams_computed", "diagrams_cached")
                summary.roi = {"region": where.key, **{name: getattr(done, name) for name in counts}}
    return summary


def _missing(
    settings: Settings, extractors: list[Any], images: list[tuple[str, str]], region: Region | None
) -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    """The images some table (of ``region``) lacks, and each table's stored shas."""
    key = None if region is None else region.key
    have = {e.name: _stored_shas(table_for(settings, e, key).parts) for e in extractors}
    return [(sha, raw) for sha, raw in images if any(sha not in shas for shas in have.values())], have


def _compute_tables(
    settings: Settings,
    extractors: list[Any],
    region: Region | None,
    todo: list[tuple[str, str]],
    have: dict[str, set[str]],
    summary: FeatureSummary,
    workers: int | None,
    on_progress: Callable[[int], None] | None,
) -> None:
    """One pass of :func:`compute_features`: the tables of the whole image, or of one region."""
    key = None if region is None else region.key
    tables = {e.name: table_for(settings, e, key) for e in extractors}
    by_name = {e.name: e for e in extractors}
    cache_dir = diagrams_dir(settings, key)
    cached_shas = _stored_shas(cache_dir)
    specs = [(e.name, e.get_params(deep=False)) for e in extractors]
    preprocess = settings.preprocess.model_dump()
    buffers: dict[str, list[pd.DataFrame]] = {name: [] for name in tables}
    diagram_shas: list[str] = []
    diagram_bundles: list[DiagramBundle] = []
    described: set[str] = set()  # tables whose table.json this run wrote or found

    def flush(force: bool = False) -> None:
        for name, frames in buffers.items():
            if frames and (force or sum(len(f) for f in frames) >= _PART_ROWS):
                _write_part(tables[name].parts, pa.Table.from_pandas(pd.concat(frames), preserve_index=False))
                frames.clear()
        if diagram_shas and (force or len(diagram_shas) >= _DIAGRAM_PART_ROWS):
            _write_part(cache_dir, _bundles_table(diagram_shas, diagram_bundles))
            diagram_shas.clear()
            diagram_bundles.clear()

    chunks = _run_chunks(settings, todo, cached_shas, cache_dir, preprocess, specs, workers, region)
    for result in chunks:
        for sha, reason in result.failed:
            summary.failed.append({"sha256": sha, "reason": reason})
        summary.diagrams_computed += len(result.bundles)
        summary.diagrams_cached += len(result.shas) - len(result.bundles)
        diagram_shas.extend(result.bundles)
        diagram_bundles.extend(result.bundles.values())
        for name, values in result.features.items():
            if name not in described:  # once per run: on an object store each look costs a request
                _write_table_info(tables[name], by_name[name], result.columns[name], settings.preprocess, key)
                described.add(name)
            frame = pd.DataFrame(values, columns=result.columns[name])
            frame.insert(0, "sha256", result.shas)
            new_rows = frame[~frame["sha256"].isin(have[name])]
            buffers[name].append(new_rows)
            have[name].update(new_rows["sha256"])  # written at the next flush; counted in the summary
        summary.computed += len(result.shas)
        flush()
        if on_progress is not None:
            on_progress(len(result.shas) + len(result.failed))
    flush(force=True)
    for table in tables.values():
        _compact(table.parts)
    _compact(cache_dir)
    for name, table in tables.items():
        summary.tables[name] = {"path": table.url, "rows": len(have[name])}


def _run_chunks(
    settings: Settings,
    todo: list[tuple[str, str]],
    cached_shas: set[str],
    cache_dir: Parts,
    preprocess: dict[str, Any],
    specs: list[tuple[str, dict[str, Any]]],
    workers: int | None,
    region: Region | None = None,
) -> Iterator[_ChunkResult]:
    """Run :func:`_compute_chunk` over ``todo`` in processes, yielding results as they finish."""
    if not todo:
        return
    storage = Storage.of(settings)
    uncached = [row for row in todo if row[0] not in cached_shas]
    cached_rows = {sha: raw for sha, raw in todo if sha in cached_shas}

    size = _CLUSTER_CHUNK if settings.compute.distributed else _CHUNK

    def tasks() -> Iterator[tuple[list[tuple[str, str]], dict[str, DiagramBundle]]]:
        """Chunks with their cached diagrams, read one cache part at a time so memory stays flat."""
        for start in range(0, len(uncached), size):
            yield uncached[start : start + size], {}
        for part in cache_dir.names() if cached_rows else []:
            table = cache_dir.read_part(part).to_pandas().drop_duplicates("sha256", keep="last").set_index("sha256")
            wanted = [sha for sha in table.index if sha in cached_rows]
            for start in range(0, len(wanted), size):
                shas = wanted[start : start + size]
                yield [(sha, cached_rows.pop(sha)) for sha in shas], {sha: _row_bundle(table.loc[sha]) for sha in shas}

    n_workers = workers or available_cores()
    if not settings.compute.distributed and (n_workers == 1 or len(todo) <= _CHUNK):
        for chunk, cached in tasks():
            yield _compute_chunk(storage, chunk, preprocess, specs, cached, region)
        return
    with compute.pool(settings, n_workers, initializer=die_with_parent) as workers_pool:
        pending = set()
        for chunk, cached in tasks():  # a bounded number of chunks in flight: memory stays flat
            pending.add(workers_pool.submit(_compute_chunk, storage, chunk, preprocess, specs, cached, region))
            if len(pending) >= 2 * workers_pool.size:
                done = next(workers_pool.as_completed(pending))
                pending.remove(done)
                yield done.result()
        for done in workers_pool.as_completed(pending):
            yield done.result()


def feature_column_names(extractors: Sequence[tuple[str, Any]], name: str, columns: Sequence[str]) -> list[str]:
    """Column names of one extractor's part of a model's input: prefixed by the extractor when there are several."""
    return [f"{name}__{c}" for c in columns] if len(extractors) > 1 else [str(c) for c in columns]


def stored_features(
    settings: Settings,
    preprocess: PreprocessSettings,
    extractors: Sequence[tuple[str, dict[str, Any]]],
    shas: Sequence[str],
    region_key: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The stored feature rows of ``shas`` (in that order) from the master tables of ``extractors`` (with their
    parameters) under ``preprocess`` (inside the region of ``region_key``, if given): a registered model's own inputs,
    side by side in its order, never recomputed.

    Returns:
        ``(frame, missing)``: rows of the shas every table has, and the shas some table lacks.
    """
    from conveyor.features.extractors import make_extractor

    local = settings.model_copy(update={"preprocess": preprocess})
    wanted = pd.Index(shas)
    frames = []
    for name, params in extractors:
        table = read_table(table_for(local, make_extractor(name, **params), region_key))
        frames.append(table.set_axis(feature_column_names(extractors, name, list(table.columns)), axis=1))
    if not frames:
        return pd.DataFrame(index=wanted), []
    present = wanted
    for frame in frames:
        present = present[present.isin(frame.index)]
    missing = [sha for sha in shas if sha not in set(present)]
    return pd.concat([f.reindex(present) for f in frames], axis=1), missing


def load_matrix(
    settings: Settings,
    extractor: str,
    *,
    version: str | None = None,
    split: str | None = "train",
    region_key: str | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """The feature matrix and labels of one dataset version and split, in one call.

    Args:
        settings: the workspace.
        extractor: a configured extractor's name, or ``"all"`` for every configured extractor's columns side by side
            (prefixed ``<name>__``); either behind ``roi-`` for the tables inside the region of ``region_key``.
        version: a dataset version id; default the latest.
        split: ``"train"``, ``"test"`` or None for both.

    Returns:
        ``(X, y)``: X indexed by sha256 (sorted), y the labels in the same order.

    Raises:
        NotFoundError: unknown version or extractor, or features not computed yet for some images.
    """
    if extractor.startswith(ROI_PREFIX):
        if region_key is None:
            raise NotFoundError(f"{extractor!r} is a region's table: no region key given (features.roi)")
        extractor = extractor.removeprefix(ROI_PREFIX)
    else:
        region_key = None
    engine = open_workspace(settings)
    members = [(sha, label) for sha, label, s in dataset_members(engine, version) if split is None or s == split]
    extractors = configured_extractors(settings)
    chosen = extractors if extractor == "all" else [e for e in extractors if e.name == extractor]
    if not chosen:
        raise NotFoundError(f"extractor {extractor!r} is not configured; configured: {[e.name for e in extractors]}")
    shas = [sha for sha, _ in members]
    frames = []
    for e in chosen:
        table = read_table(table_for(settings, e, region_key))
        missing = [sha for sha in shas if sha not in table.index]
        if missing:
            where = "" if region_key is None else f" inside region {region_key}"
            raise NotFoundError(
                f"{len(missing)} images of the dataset have no {e.name!r} features{where} yet: run `conveyor features`"
            )
        frame = table.loc[shas]
        frames.append(frame.add_prefix(f"{e.name}__") if extractor == "all" else frame)
    X = pd.concat(frames, axis=1) if len(frames) > 1 else frames[0]
    y = pd.Series([label for _, label in members], index=X.index, name="label")
    return X, y
