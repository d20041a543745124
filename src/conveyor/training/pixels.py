"""Preprocessed pixels on disk, for the image families: batches are read as they are needed, never the whole set.

A convolutional network trains for many epochs over the same images; decoding and preprocessing every file again per
epoch would cost more than the network on small images, and holding a 100k-image training split in memory as float32
would take 6.4 GB at 128x128. :class:`PixelStore` preprocesses each raw-store image once, with the code the
served model runs (:meth:`FeaturePipeline.image` with ``colour=True``), and appends it to one fixed-row-size file per
preprocessing configuration under ``cache/pixels/``, keyed by sha256 like the feature tables: a retrain on a grown
dataset preprocesses only the new images.

:class:`ImageRows` is a read-only, lazily indexed view of some of its rows with the shape of an image array. Indexing
it with a slice or an index array (as scikit-learn's splitters do) gives another view; ``np.asarray`` reads the rows
it names, with plain reads (no memory map: the process's memory holds the batch, nothing more; the operating system's
page cache keeps what fits). ``CNNClassifier`` converts one batch at a time, so training reads batches from disk.

A killed append leaves rows past the end of the index; the next open cuts them off, so the store is always whole.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conveyor.config import PreprocessSettings, Settings
from conveyor.workspace import atomic_write

if TYPE_CHECKING:
    from conveyor.data.versions import RawImages

__all__ = ["ImageRows", "PixelStore"]

_DTYPE = np.dtype(np.float32)


class ImageRows:
    """Rows of an (N, H, W) or (N, H, W, C) float32 file, read only when converted with ``np.asarray``.

    Args:
        path: the raw file of fixed-size rows.
        row_shape: (H, W) or (H, W, C) of one row.
        rows: which rows of the file, in order.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], rows: np.ndarray) -> None:
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = np.asarray(rows, dtype=np.int64)

    # The parts of the ndarray interface that scikit-learn's splitters and CNNClassifier use.
    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.rows.size), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def dtype(self) -> np.dtype:
        return _DTYPE

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, key: Any) -> ImageRows | np.ndarray:
        """A view for a slice, an index array or a boolean mask (optionally followed by ``...``); an image for an
        integer."""
        if isinstance(key, tuple):
            if len(key) == 2 and key[1] is Ellipsis:
                key = key[0]
            else:
                raise IndexError(f"ImageRows selects whole images: index with one key (and ...), got {key!r}")
        if isinstance(key, (int, np.integer)):
            return np.asarray(ImageRows(self.path, self.row_shape, self.rows[[int(key)]]))[0]
        return ImageRows(self.path, self.row_shape, self.rows[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Read the rows (runs of consecutive rows in one read each) straight into a new array."""
        out = np.empty(self.shape, dtype=_DTYPE)
        if not len(self):
            return out
        row_bytes = out[0].nbytes
        order = np.argsort(self.rows, kind="stable")
        sorted_rows = self.rows[order]
        flat = out.reshape(len(self), -1)
        with open(self.path, "rb", buffering=0) as handle:
            # Runs where the file rows are consecutive and appear in that order in the output.
            breaks = np.flatnonzero((np.diff(sorted_rows) != 1) | (np.diff(order) != 1)) + 1
            for run in np.split(np.arange(len(self)), breaks):
                first = int(order[run[0]])
                target = memoryview(flat[first : first + run.size]).cast("B")  # type: ignore[arg-type]
                handle.seek(int(sorted_rows[run[0]]) * row_bytes)
                if handle.readinto(target) != target.nbytes:
                    raise EOFError(f"{self.path} is shorter than its index: rebuild the pixel store")
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageRows({self.path.name}, shape={self.shape})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "row_shape": self.row_shape, "rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["row_shape"], state["rows"])  # type: ignore[misc]


class PixelStore:
    """Preprocessed images of one preprocessing configuration, appended once each, keyed by sha256."""

    def __init__(self, home: Path, preprocess: PreprocessSettings) -> None:
        self.preprocess = preprocess
        self.folder = Path(home) / "cache" / "pixels" / preprocess.config_hash()
        size = tuple(preprocess.size)
        self.row_shape: tuple[int, ...] = size if preprocess.grayscale else (*size, 3)
        self._data = self.folder / "pixels.f32"
        self._index = self.folder / "index.json"

    @classmethod
    def of(cls, settings: Settings) -> PixelStore:
        return cls(settings.home, settings.preprocess)

    def rows(self, shas: Sequence[str], locate: Callable[[list[str]], RawImages] | None = None) -> ImageRows:
        """The images of ``shas`` in that order, preprocessing those not stored yet from their stored bytes, which
        ``locate`` finds (asked only about the missing ones; see :func:`conveyor.data.versions.raw_images`).

        Raises:
            KeyError: a sha256 is neither stored nor found by ``locate``.
        """
        with self._locked():
            index = self._load_index()
            missing = [sha for sha in dict.fromkeys(shas) if sha not in index]
            if missing:
                index = self._append(missing, locate(missing) if locate is not None else None, index)
        return ImageRows(self._data, self.row_shape, np.array([index[sha] for sha in shas], dtype=np.int64))

    def __len__(self) -> int:
        return len(self._load_index())

    def _append(self, shas: list[str], raw: RawImages | None, index: dict[str, int]) -> dict[str, int]:
        from conveyor.features.pipeline import FeaturePipeline

        absent = [sha for sha in shas if raw is None or sha not in raw]
        if absent:
            raise KeyError(f"{len(absent)} image(s) are not in the raw store, e.g. {absent[0]}")
        if raw is None:  # nothing to append
            return index
        pipeline = FeaturePipeline(self.preprocess, [])
        index = dict(index)
        row_bytes = _DTYPE.itemsize * int(np.prod(self.row_shape))
        with open(self._data, "ab") as handle:
            handle.truncate(len(index) * row_bytes)  # rows a killed append wrote past the index
            handle.seek(len(index) * row_bytes)
            for sha in shas:
                image = pipeline.image(raw.read(sha), colour=True)
                if image.shape != self.row_shape:  # a misfit row would shift every later one
                    raise ValueError(f"image {sha} preprocessed to {image.shape}, the store holds {self.row_shape}")
                handle.write(np.ascontiguousarray(image, dtype=_DTYPE).tobytes())
                index[sha] = len(index)
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write(self._index, json.dumps({"shas": list(index)}).encode())
        return index

    def _load_index(self) -> dict[str, int]:
        if not self._index.exists():
            return {}
        shas = json.loads(self._index.read_text())["shas"]
        return {sha: i for i, sha in enumerate(shas)}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One appender at a time (two trainings of one workspace may run at once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(handle, fcntl.LOCK_UN)
