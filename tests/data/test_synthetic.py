"""The demo generator is deterministic, and its drifts change what they claim to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conveyor.data.synthetic import SyntheticSpec, generate_dataset, render_slice


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", SyntheticSpec(n_per_class=3, seed=5))
    second = generate_dataset(tmp_path / "b", SyntheticSpec(n_per_class=3, seed=5))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", SyntheticSpec(n_per_class=1, seed=1))
    second = generate_dataset(tmp_path / "b", SyntheticSpec(n_per_class=1, seed=2))
    assert first[0].read_bytes() != second[0].read_bytes()


def test_layout_is_one_folder_per_class(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path, SyntheticSpec(n_per_class=2, size=64))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "no_tumour/case_0_0000.png",
        "no_tumour/case_0_0001.png",
        "tumour/case_0_0000.png",
        "tumour/case_0_0001.png",
    ]


def test_scanner_drift_changes_resolution_and_brightness(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path, SyntheticSpec(n_per_class=1, size=64, drift="scanner"))
    image = np.asarray(Image.open(paths[0]))
    assert image.shape == (96, 96)
    assert image[0, 0] > 50  # no black margin any more


def test_tumour_slices_are_brighter_inside_than_healthy_ones() -> None:
    healthy = [render_slice(np.random.default_rng(i), 96, tumour=False).max() for i in range(10)]
    tumour = [render_slice(np.random.default_rng(i), 96, tumour=True).max() for i in range(10)]
    assert np.mean(tumour) > np.mean(healthy)
