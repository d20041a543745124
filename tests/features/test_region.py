"""features.roi: features computed inside a region, in tables of their own keyed by what drew the region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.config import PreprocessSettings, Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import NotFoundError
from conveyor.features.extractors import make_extractor
from conveyor.features.pipeline import FeaturePipeline, inside
from conveyor.features.store import compute_features, load_matrix, read_table, table_for


class LeftHalf:
    """A region that is the left half of any image (picklable, as the process pool needs)."""

    key = "lefthalf0000"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        mask = np.zeros(pixels.shape[:2], dtype=bool)
        mask[:, : pixels.shape[1] // 2] = True
        return mask


@pytest.fixture
def workspace(tmp_path: Path) -> Settings:
    settings = Settings(
        home=tmp_path / "ws",
        preprocess={"size": (32, 32)},  # type: ignore[arg-type]
        features={"extractors": ["stats", "intensity"]},  # type: ignore[arg-type]
    )
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=4, size=48, seed=2))
    ingest(tmp_path / "src", settings)
    return settings


def test_inside_blacks_out_what_lies_outside_the_mask() -> None:
    pixels = np.full((2, 3), 7, dtype=np.uint8)
    mask = np.array([[True, False, True], [False, True, False]])
    assert inside(pixels, mask).tolist() == [[7, 0, 7], [0, 7, 0]]


def test_inside_masks_every_channel_of_a_colour_image() -> None:
    pixels = np.full((1, 2, 3), 9, dtype=np.uint8)
    assert inside(pixels, np.array([[False, True]])).tolist() == [[[0, 0, 0], [9, 9, 9]]]


def test_a_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a region mask of shape \(2, 2\) for an image of shape \(2, 3\)"):
        inside(np.zeros((2, 3)), np.ones((2, 2), dtype=bool))


def test_the_pipeline_computes_features_of_what_lies_inside_the_region() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    specs = [("stats", {}), ("intensity", {})]
    whole = FeaturePipeline(PreprocessSettings(size=(32, 32)), specs)
    region = FeaturePipeline(PreprocessSettings(size=(32, 32)), specs, region=LeftHalf())
    masked = pixels.copy()
    masked[:, 20:] = 0
    expected = whole.vectors(whole.prepare([whole.preprocessed(masked)]))
    got = region.vectors(region.prepare([region.preprocessed(pixels)]))
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, whole.vectors(whole.prepare([whole.preprocessed(pixels)])))


def test_the_store_keeps_a_regions_tables_apart_under_its_key(workspace: Settings) -> None:
    summary = compute_features(workspace, region=LeftHalf(), workers=1)
    assert (summary.computed, summary.cached) == (8, 0)
    assert summary.roi == {"region": "lefthalf0000", "computed": 8, "cached": 0, "diagrams_computed": 8,
                           "diagrams_cached": 0}  # fmt: skip
    assert {name: info["rows"] for name, info in summary.tables.items()} == {
        "stats": 8, "intensity": 8, "roi-stats": 8, "roi-intensity": 8,
    }  # fmt: skip
    assert table_for(workspace, make_extractor("stats"), "lefthalf0000").path.name.endswith("-roi-lefthalf0000")


def test_a_regions_stored_features_are_the_pipelines(workspace: Settings) -> None:
    compute_features(workspace, region=LeftHalf(), workers=1)
    table = read_table(table_for(workspace, make_extractor("stats"), "lefthalf0000").path)
    sha = table.index[0]
    raw = next((workspace.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes()
    pipeline = FeaturePipeline(workspace.preprocess, [("stats", {})], region=LeftHalf())
    expected = pipeline.vectors(pipeline.prepare([pipeline.image(raw)]))[0]
    np.testing.assert_array_equal(table.loc[sha].to_numpy(), expected)


def test_a_second_run_with_the_region_computes_nothing(workspace: Settings) -> None:
    compute_features(workspace, region=LeftHalf(), workers=1)
    again = compute_features(workspace, region=LeftHalf(), workers=1)
    assert again.roi is not None and (again.roi["computed"], again.roi["cached"]) == (0, 8)
    assert (again.computed, again.cached) == (0, 8)


def test_the_process_pool_computes_the_same_region_tables(workspace: Settings, tmp_path: Path) -> None:
    from conveyor.features import store

    compute_features(workspace, region=LeftHalf(), workers=1)
    serial = read_table(table_for(workspace, make_extractor("stats"), "lefthalf0000").path)
    other = workspace.model_copy(update={"home": tmp_path / "ws2"})
    ingest(tmp_path / "src", other)
    chunk = store._CHUNK
    try:
        store._CHUNK = 2  # several chunks over two processes
        compute_features(other, region=LeftHalf(), workers=2)
    finally:
        store._CHUNK = chunk
    pooled = read_table(table_for(other, make_extractor("stats"), "lefthalf0000").path)
    np.testing.assert_array_equal(pooled.loc[serial.index].to_numpy(), serial.to_numpy())


def test_load_matrix_reads_a_regions_table_by_its_roi_name(workspace: Settings) -> None:
    compute_features(workspace, region=LeftHalf(), workers=1)
    X, _ = load_matrix(workspace, "roi-stats", split=None, region_key="lefthalf0000")
    expected = read_table(table_for(workspace, make_extractor("stats"), "lefthalf0000").path)
    np.testing.assert_array_equal(X.to_numpy(), expected.loc[X.index].to_numpy())


def test_a_regions_table_without_its_key_says_so(workspace: Settings) -> None:
    compute_features(workspace, region=LeftHalf(), workers=1)
    with pytest.raises(NotFoundError, match="'roi-stats' is a region's table: no region key given"):
        load_matrix(workspace, "roi-stats")
