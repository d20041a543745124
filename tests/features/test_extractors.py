"""Named extractors: registry, columns, fixed vs learned grids, config hashes, bundle validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from conveyor.features.extractors import (
    EXTRACTORS,
    PART_PREFIXES,
    BlockExtractor,
    IntensityExtractor,
    LandscapeExtractor,
    StatsExtractor,
    check_bundles,
    make_extractor,
)
from conveyor.features.persistence import BUNDLE_KEYS, diagram_bundle
from conveyor.features.vectorizers import PersistenceLandscape

# The feature store keys master tables by these: a change orphans every stored table, so it must be deliberate
# (bump the extractor's `version` or DIAGRAM_VERSION when the numbers change, then update here).
DEFAULT_CONFIG_HASHES = {
    "landscape": "3a2c8c74b3a12fc3fe66c4ec90de93347ecb3b3dd5fda3d571c3a5bfc96b3be6",
    "block": "d41485bf1e8d9fdd868734f9c790eb083f89faacfd618c263344f007d71b1a64",
    "fda": "f84e05ade561cd746edf3feb43deb09a0dad64c61ff474f9fe82df1276aced17",
    "stats": "53d0bb9b1d1a1621dd77a8bead039593c060c34a6b2ef0c795dab74e8503888d",
    "image": "5de41a27cc7422fe8d618b72625947eb56ebd6cd77a08ff1681c33e01f77ccd1",
    "betti": "8f13e42ce010002dcd48b6d57ff8039c825a6489b921142be961072d996a807e",
    "entropy": "a67d4720f3bdfbda1211d6c8750753c6e6f5421b5234fd9018a2f3c42e44f29e",
    "intensity": "70f9da4160d0232e82c9261bdb32e64d3b7f3deb9a589b5cd9733025555f077d",
}
DEFAULT_WIDTHS = {
    "landscape": 4 * 3 * 20,
    "block": 4 * 5 * 5,
    "fda": 4 * 21,
    "stats": 4 * 38,
    "image": 4 * 10 * 10,
    "betti": 4 * 20,
    "entropy": 4,
    "intensity": 34,
}


def test_registry_names() -> None:
    assert sorted(EXTRACTORS) == sorted(
        ["landscape", "block", "fda", "stats", "image", "betti", "entropy", "intensity"]
    )
    assert all(cls.name == name for name, cls in EXTRACTORS.items())


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_default_config_hash_is_stable(name: str) -> None:
    assert make_extractor(name).config_hash() == DEFAULT_CONFIG_HASHES[name]


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_default_width_and_finite_features(data, name: str) -> None:
    extractor = make_extractor(name)
    X = data.sample_input(extractor, n_samples=3, seed=31)
    out = extractor.fit(X).transform(X)
    assert out.shape == (3, DEFAULT_WIDTHS[name]) == (3, extractor.get_feature_names_out().shape[0])
    assert out.dtype == np.float64 and np.isfinite(out).all()


def test_config_lists_name_version_params_and_diagram_version() -> None:
    assert LandscapeExtractor(k=2, grid=(0.0, 0.5, 1.0)).config() == {
        "extractor": "landscape",
        "version": 1,
        "params": {"fit_grids": False, "grid": [0.0, 0.5, 1.0], "k": 2, "n_grid": 20},
        "diagram_version": 1,
    }


def test_intensity_config_has_no_diagram_version() -> None:
    assert "diagram_version" not in IntensityExtractor().config()


def test_config_hash_changes_with_any_parameter() -> None:
    hashes = {
        BlockExtractor().config_hash(),
        BlockExtractor(tau=0.25).config_hash(),
        BlockExtractor(fit_grids=True).config_hash(),
        BlockExtractor(persistence_grid=[0.0, 0.1, 1.0]).config_hash(),
    }
    assert len(hashes) == 4


def test_config_hash_is_the_same_for_a_tuple_or_list_grid() -> None:
    assert LandscapeExtractor(grid=(0.0, 1.0)).config_hash() == LandscapeExtractor(grid=[0.0, 1.0]).config_hash()


def test_columns_are_parts_in_bundle_order_with_prefixes(data) -> None:
    extractor = LandscapeExtractor(k=1, n_grid=2).fit(data.bundles_of(data.blob_images(2)))
    assert extractor.get_feature_names_out().tolist() == [
        "sub_h0_landscape_k1_t000", "sub_h0_landscape_k1_t001",
        "sub_h1_landscape_k1_t000", "sub_h1_landscape_k1_t001",
        "sup_h0_landscape_k1_t000", "sup_h0_landscape_k1_t001",
        "sup_h1_landscape_k1_t000", "sup_h1_landscape_k1_t001",
    ]  # fmt: skip
    assert list(PART_PREFIXES.values()) == ["sub_h0", "sub_h1", "sup_h0", "sup_h1"]


def test_extractor_is_its_vectoriser_applied_per_part(data) -> None:
    bundles = data.bundles_of(data.blob_images(3, seed=32))
    out = LandscapeExtractor(k=2, n_grid=7).fit(bundles).transform(bundles)
    vectorizer = PersistenceLandscape(k=2, grid=np.linspace(0.0, 1.0, 7)).fit([])
    expected = np.hstack([vectorizer.transform([b[key] for b in bundles]) for key in BUNDLE_KEYS])
    np.testing.assert_array_equal(out, expected)


def test_fixed_grids_make_features_independent_of_the_training_set(data) -> None:
    images = data.blob_images(5, seed=33)
    bundles = data.bundles_of(images)
    on_some = BlockExtractor().fit(bundles[:2]).transform(bundles[4:])
    on_none = BlockExtractor().fit([]).transform(bundles[4:])
    np.testing.assert_array_equal(on_some, on_none)


def test_learned_grids_are_fitted_per_part_and_kept(data) -> None:
    bundles = data.bundles_of(data.blob_images(4, seed=34))
    extractor = BlockExtractor(fit_grids=True).fit(bundles)
    grids = {key: v.persistence_grid_.copy() for key, v in extractor.vectorizers_.items()}
    assert not np.array_equal(grids[("sublevel", 0)], grids[("sublevel", 1)])
    extractor.transform(data.bundles_of(data.blob_images(2, seed=35)))
    for key, vectorizer in extractor.vectorizers_.items():
        np.testing.assert_array_equal(vectorizer.persistence_grid_, grids[key])


def test_bundle_of_empty_diagrams_gives_finite_features() -> None:
    empty = {key: np.empty((0, 2)) for key in BUNDLE_KEYS}
    for name, cls in EXTRACTORS.items():
        if cls.input_kind == "bundle":
            out = make_extractor(name).fit([empty]).transform([empty])
            assert np.isfinite(out).all(), name


def test_pandas_output_has_the_column_names(data) -> None:
    bundles = data.bundles_of(data.blob_images(2, seed=36))
    extractor = StatsExtractor().set_output(transform="pandas").fit(bundles)
    frame = extractor.transform(bundles)
    assert list(frame.columns) == extractor.get_feature_names_out().tolist()
    assert frame.columns[0] == "sub_h0_stats_mean_births"


def test_pickled_extractor_gives_the_same_features(data) -> None:
    bundles = data.bundles_of(data.blob_images(3, seed=37))
    extractor = make_extractor("image", fit_grids=True).fit(bundles)
    restored = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_array_equal(restored.transform(bundles), extractor.transform(bundles))


def test_intensity_extractor_takes_images(data) -> None:
    images = data.blob_images(2, seed=38)
    extractor = make_extractor("intensity")
    assert extractor.input_kind == "image"
    assert extractor.fit(images).transform(images).shape == (2, 34)


def test_transform_of_no_bundles_is_an_empty_table(data) -> None:
    extractor = make_extractor("entropy").fit([])
    assert extractor.transform([]).shape == (0, 4)


# ----------------------------------------------------------------------------------------------------- errors


def test_make_extractor_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"extractor: unknown name 'wavelet', expected one of \['betti'"):
        make_extractor("wavelet")


def test_make_extractor_rejects_an_unknown_parameter() -> None:
    with pytest.raises(ValueError, match=r"extractor 'stats': .*unexpected keyword argument 'k'"):
        make_extractor("stats", k=3)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        ({("sublevel", 0): np.empty((0, 2))}, r"X: expected a sequence of diagram bundles .*got dict"),
        ([np.empty((0, 2))], r"bundle 0: expected a mapping \(filtration, dim\) -> diagram, got ndarray"),
        ([{("sublevel", 0): np.empty((0, 2))}], r"bundle 0: missing diagram \('sublevel', 1\)"),
    ],
)
def test_bad_bundles_raise_value_error(X: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_bundles(X)


def test_bad_diagram_in_a_bundle_names_bundle_and_part() -> None:
    bundle = diagram_bundle(np.eye(4, dtype=np.float32))
    bundle[("superlevel", 1)] = np.array([[0.9, 0.1]])
    with pytest.raises(ValueError, match=r"bundle 1, \('superlevel', 1\): diagram: has a death below its birth"):
        check_bundles([diagram_bundle(np.eye(4, dtype=np.float32)), bundle])
