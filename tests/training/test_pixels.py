"""The pixel store: each image preprocessed once, read back exactly, never whole; ImageRows indexes lazily."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils import _safe_indexing

from conveyor.config import PreprocessSettings
from conveyor.data.versions import RawImages
from conveyor.features.pipeline import FeaturePipeline
from conveyor.storage import Storage
from conveyor.training.pixels import ImageRows, PixelStore

PREPROCESS = PreprocessSettings(size=(16, 20))


def write_images(folder: Path, n: int, mode: str = "L") -> dict[str, Path]:
    """``n`` random PNGs; keys stand in for their sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        rng = np.random.default_rng(i)
        shape = (40, 50) if mode == "L" else (40, 50, 3)
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
        out[f"sha{i}"] = path
    return out


def found(raw: dict[str, Path]) -> Callable[[list[str]], RawImages]:
    """A ``locate`` for the store: the asked sha256s that ``raw`` has, in a store over the folder that holds them."""
    root = Path(os.path.commonpath([p.parent for p in raw.values()]))
    return lambda missing: RawImages(
        Storage(root), {sha: str(raw[sha].relative_to(root)) for sha in missing if sha in raw}
    )


def expected(path: Path, preprocess: PreprocessSettings = PREPROCESS) -> np.ndarray:
    return FeaturePipeline(preprocess, []).image(path.read_bytes(), colour=True)


def test_rows_are_the_preprocessed_images_in_the_order_asked(tmp_path: Path) -> None:
    raw = write_images(tmp_path / "raw", 4)
    rows = PixelStore(tmp_path / "ws", PREPROCESS).rows(["sha2", "sha0", "sha3"], found(raw))
    assert rows.shape == (3, 16, 20)
    images = np.asarray(rows)
    assert images.dtype == np.float32
    for got, sha in zip(images, ["sha2", "sha0", "sha3"], strict=True):
        np.testing.assert_array_equal(got, expected(raw[sha]))


def test_a_second_call_preprocesses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_images(tmp_path / "raw", 3)
    store = PixelStore(tmp_path / "ws", PREPROCESS)
    first = np.asarray(store.rows(list(raw), found(raw)))
    monkeypatch.setattr(FeaturePipeline, "image", lambda *a, **k: pytest.fail("preprocessed again"))
    again = np.asarray(PixelStore(tmp_path / "ws", PREPROCESS).rows(list(raw)))  # no raw paths needed
    np.testing.assert_array_equal(again, first)


def test_a_grown_dataset_preprocesses_only_the_new_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_images(tmp_path / "raw", 5)
    store = PixelStore(tmp_path / "ws", PREPROCESS)
    store.rows(["sha0", "sha1"], found(raw))
    seen: list[bytes] = []
    original = FeaturePipeline.image

    def counting(self: FeaturePipeline, data: bytes, *, colour: bool = False) -> np.ndarray:
        seen.append(data)
        return original(self, data, colour=colour)

    monkeypatch.setattr(FeaturePipeline, "image", counting)
    rows = store.rows(list(raw), found(raw))
    assert len(seen) == 3
    assert len(store) == 5
    np.testing.assert_array_equal(np.asarray(rows)[4], expected(raw["sha4"]))


def test_rows_a_killed_append_left_past_the_index_are_cut_off(tmp_path: Path) -> None:
    raw = write_images(tmp_path / "raw", 3)
    store = PixelStore(tmp_path / "ws", PREPROCESS)
    store.rows(["sha0"], found(raw))
    with open(store.folder / "pixels.f32", "ab") as handle:  # half a row written, then the process died
        handle.write(b"\xff" * 700)
    rows = store.rows(["sha0", "sha1", "sha2"], found(raw))
    assert (store.folder / "pixels.f32").stat().st_size == 3 * 16 * 20 * 4
    np.testing.assert_array_equal(np.asarray(rows)[1], expected(raw["sha1"]))


def test_an_image_neither_stored_nor_in_the_raw_store_is_a_key_error(tmp_path: Path) -> None:
    raw = write_images(tmp_path / "raw", 1)
    with pytest.raises(KeyError, match=r"1 image\(s\) are not in the raw store, e.g. nope"):
        PixelStore(tmp_path / "ws", PREPROCESS).rows(["sha0", "nope"], found(raw))


def test_colour_settings_keep_three_channels_and_repeat_a_grayscale_file(tmp_path: Path) -> None:
    colour = PreprocessSettings(size=(16, 20), grayscale=False)
    raw = {**write_images(tmp_path / "rgb", 1, "RGB"), "gray": write_images(tmp_path / "gray", 1)["sha0"]}
    rows = np.asarray(PixelStore(tmp_path / "ws", colour).rows(["sha0", "gray"], found(raw)))
    assert rows.shape == (2, 16, 20, 3)
    np.testing.assert_array_equal(rows[0], expected(raw["sha0"], colour))
    gray = FeaturePipeline(colour, []).image(raw["gray"].read_bytes())
    for channel in range(3):
        np.testing.assert_array_equal(rows[1][..., channel], gray)


def test_each_preprocessing_configuration_has_its_own_store(tmp_path: Path) -> None:
    other = PreprocessSettings(size=(8, 8))
    assert PixelStore(tmp_path, PREPROCESS).folder != PixelStore(tmp_path, other).folder


@pytest.fixture
def rows(tmp_path: Path) -> ImageRows:
    raw = write_images(tmp_path / "raw", 6)
    return PixelStore(tmp_path / "ws", PREPROCESS).rows(list(raw), found(raw))


def test_indexing_gives_views_that_read_the_same_values(rows: ImageRows) -> None:
    whole = np.asarray(rows)
    for key in (slice(1, 4), np.array([5, 0, 2]), np.array([True, False, True, False, False, True])):
        view = rows[key]
        assert isinstance(view, ImageRows)
        np.testing.assert_array_equal(np.asarray(view), whole[key])
    np.testing.assert_array_equal(rows[3], whole[3])
    np.testing.assert_array_equal(np.asarray(rows[np.array([4, 1]), ...]), whole[[4, 1]])


def test_indexing_past_the_image_axis_is_refused(rows: ImageRows) -> None:
    with pytest.raises(IndexError, match="selects whole images"):
        rows[0, 1]


def test_scikit_learn_splitting_keeps_it_lazy(rows: ImageRows) -> None:
    part = _safe_indexing(rows, np.array([2, 3]))
    assert isinstance(part, ImageRows)
    np.testing.assert_array_equal(np.asarray(part), np.asarray(rows)[[2, 3]])


def test_it_pickles_as_a_path_and_row_numbers(rows: ImageRows) -> None:
    view = rows[np.array([1, 4])]
    blob = pickle.dumps(view)
    assert len(blob) < 1000  # no pixels inside
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), np.asarray(view))


def test_only_the_missing_images_are_looked_up(tmp_path: Path) -> None:
    raw = write_images(tmp_path / "raw", 3)
    store = PixelStore(tmp_path / "ws", PREPROCESS)
    store.rows(["sha0"], found(raw))
    asked: list[list[str]] = []
    store.rows(["sha0", "sha1", "sha2", "sha1"], lambda missing: asked.append(missing) or found(raw)(missing))
    assert asked == [["sha1", "sha2"]]
