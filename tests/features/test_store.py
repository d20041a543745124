"""The feature store: computes what is missing once, appends, keys tables by config, reads a matrix in one call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.config import Settings
from conveyor.data.decode import decode_image
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.errors import ConfigError, NotFoundError
from conveyor.features import store
from conveyor.features.extractors import make_extractor
from conveyor.features.persistence import diagram_bundle
from conveyor.features.store import compute_features, load_matrix, read_table, table_for
from conveyor.preprocess import Preprocessor


def make_settings(home: Path, **features: object) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (48, 48)},  # type: ignore[arg-type]
        features={"extractors": ["landscape", "intensity"], **features},  # type: ignore[arg-type]
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=5, size=64, seed=1))
    ingest(tmp_path / "src", settings)
    return settings


def test_first_run_computes_every_image(workspace: Settings) -> None:
    summary = compute_features(workspace, workers=1)
    assert (summary.computed, summary.cached, summary.diagrams_computed) == (10, 0, 10)
    assert {name: info["rows"] for name, info in summary.tables.items()} == {"landscape": 10, "intensity": 10}


def test_second_run_computes_nothing(workspace: Settings) -> None:
    compute_features(workspace, workers=1)
    again = compute_features(workspace, workers=1)
    assert (again.computed, again.cached, again.diagrams_computed) == (0, 10, 0)


def test_stored_features_equal_a_direct_computation(workspace: Settings) -> None:
    compute_features(workspace, workers=1)
    landscape = make_extractor("landscape")
    table = read_table(table_for(workspace, landscape).path)
    sha = table.index[0]
    raw = next((workspace.home / "raw" / sha[:2]).glob(f"{sha}.*")).read_bytes()
    image = Preprocessor(workspace.preprocess)(decode_image(raw).pixels)
    expected = landscape.fit([diagram_bundle(image)]).transform([diagram_bundle(image)])[0]
    np.testing.assert_allclose(table.loc[sha].to_numpy(), expected)
    assert list(table.columns) == [str(c) for c in landscape.get_feature_names_out()]


def test_new_images_append_without_recomputing_old_ones(workspace: Settings, tmp_path: Path) -> None:
    compute_features(workspace, workers=1)
    before = read_table(table_for(workspace, make_extractor("intensity")).path)
    generate_dataset(tmp_path / "more", SyntheticSpec(n_per_class=2, size=64, seed=2))
    ingest(tmp_path / "more", workspace)
    summary = compute_features(workspace, workers=1)
    after = read_table(table_for(workspace, make_extractor("intensity")).path)
    assert (summary.computed, summary.cached) == (4, 10)
    assert len(after) == 14
    np.testing.assert_array_equal(after.loc[before.index].to_numpy(), before.to_numpy())


def test_a_changed_config_starts_a_new_table_from_cached_diagrams(workspace: Settings) -> None:
    compute_features(workspace, workers=1)
    changed = make_settings(workspace.home, params={"landscape": {"n_grid": 7}})
    summary = compute_features(changed, workers=1)
    old, new = (
        table_for(workspace, make_extractor("landscape")),
        table_for(changed, make_extractor("landscape", n_grid=7)),
    )
    assert old.path != new.path
    assert (summary.computed, summary.diagrams_computed, summary.diagrams_cached) == (10, 0, 10)
    assert read_table(new.path).shape == (10, 4 * 3 * 7)  # four diagrams x k=3 levels x 7 grid points
    assert read_table(old.path).shape[0] == 10


def test_parallel_workers_give_the_same_table(workspace: Settings, tmp_path: Path) -> None:
    compute_features(workspace, workers=1)
    serial = read_table(table_for(workspace, make_extractor("landscape")).path).sort_index()
    other = make_settings(tmp_path / "ws2")
    ingest(tmp_path / "src", other)
    compute_features(other, workers=2)
    parallel = read_table(table_for(other, make_extractor("landscape")).path).sort_index()
    np.testing.assert_allclose(parallel.to_numpy(), serial.to_numpy())


def test_a_run_killed_between_parts_resumes(workspace: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = store._write_part
    calls = []

    def dies_on_the_second_part(path: Path, frame: object) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(path, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write_part", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        compute_features(workspace, workers=1)
    monkeypatch.setattr(store, "_write_part", real_write)
    summary = compute_features(workspace, workers=1)
    assert summary.computed + summary.cached == 10
    assert {info["rows"] for info in summary.tables.values()} == {10}


def test_load_matrix_reads_one_split_with_labels(workspace: Settings) -> None:
    compute_features(workspace, workers=1)
    X, y = load_matrix(workspace, "intensity", split="train")
    X_test, _ = load_matrix(workspace, "intensity", split="test")
    assert (len(X), len(X_test)) == (8, 2)
    assert sorted(y.value_counts().items()) == [("no_tumour", 4), ("tumour", 4)]
    assert list(X.index) == sorted(X.index)
    both, _ = load_matrix(workspace, "all", split=None)
    assert both.shape[0] == 10 and both.columns[0].startswith("landscape__")


def test_load_matrix_before_features_says_what_to_run(workspace: Settings) -> None:
    with pytest.raises(NotFoundError, match="run `conveyor features`"):
        load_matrix(workspace, "landscape")


def test_unknown_extractor_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown extractor 'landscapes'"):
        compute_features(make_settings(tmp_path / "ws", extractors=["landscapes"]))


def test_fitted_grids_are_refused_for_a_master_table(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "ws", params={"landscape": {"fit_grids": True}})
    with pytest.raises(ConfigError, match="fit_grids: a master table needs fixed grids"):
        compute_features(settings)


def test_many_parts_are_compacted_into_one(workspace: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_COMPACT_AFTER", 3)
    monkeypatch.setattr(store, "_CHUNK", 2)
    monkeypatch.setattr(store, "_PART_ROWS", 2)
    monkeypatch.setattr(store, "_DIAGRAM_PART_ROWS", 2)
    compute_features(workspace, workers=1)
    table = table_for(workspace, make_extractor("intensity")).path
    assert len(list(table.glob("part-*.parquet"))) == 1
    assert len(store.diagrams_dir(workspace).names()) == 1
    assert len(read_table(table)) == 10
