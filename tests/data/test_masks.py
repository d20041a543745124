"""Segmentation masks at ingest: paired with their images, checked, stored by sha256; every file in one place."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.masks import read_mask
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.store.db import session_scope
from conveyor.store.models import Mask
from conveyor.workspace import open_workspace
from tests.helpers import encode, png_bytes, write


def _masks(settings: Settings) -> list[Mask]:
    with session_scope(open_workspace(settings)) as session:
        return list(session.scalars(select(Mask)))


def _lesion(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[20:30, 10:25] = 255
    return mask


def test_generated_images_and_masks_are_stored_together(tmp_path: Path, settings: Settings) -> None:
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=4, size=64, seed=2, masks=True))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.quarantined, summary.masks) == (8, 8, 0, 8)
    assert sorted(summary.by_class) == ["no_tumour", "tumour"]
    areas = sorted(m.areas["lesion"] for m in _masks(settings))
    assert areas[:4] == [0, 0, 0, 0] and all(a > 0 for a in areas[4:])  # only tumours have a lesion


def test_a_mask_beside_its_image_is_read_as_class_indices(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "tumour" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "tumour" / "a_mask.png", encode(_lesion(), "PNG"))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.masks) == (1, 1, 1)
    [mask] = _masks(settings)
    assert mask.areas == {"background": 64 * 64 - 150, "lesion": 150}
    stored = read_mask((settings.home / mask.raw_path).read_bytes())
    assert stored.dtype == np.uint8 and set(np.unique(stored).tolist()) == {0, 1} and stored.sum() == 150


def test_bad_pairs_are_quarantined_each_with_its_reason(tmp_path: Path, settings: Settings) -> None:
    src = tmp_path / "src" / "tumour"
    write(src / "images" / "ok.png", png_bytes(seed=1))
    write(src / "masks" / "ok.png", encode(_lesion(), "PNG"))
    write(src / "images" / "alone.png", png_bytes(seed=2))  # no mask
    write(src / "masks" / "ghost.png", encode(_lesion(), "PNG"))  # no image
    write(src / "images" / "small.png", png_bytes(seed=3))
    write(src / "masks" / "small.png", encode(_lesion(32), "PNG"))  # another size
    write(src / "images" / "three.png", png_bytes(seed=4))
    write(src / "masks" / "three.png", encode(np.full((64, 64), 2, np.uint8), "PNG"))  # class 2 of two
    write(src / "images" / "colour.png", png_bytes(seed=5))
    write(src / "masks" / "colour.png", encode(np.dstack([_lesion(), _lesion() // 2, _lesion()]), "PNG"))
    summary = ingest(tmp_path / "src", settings)
    assert summary.seen == summary.stored + summary.quarantined == 6
    reasons = {r["path"]: (r["reason"], r["detail"]) for r in summary.rejected}
    assert reasons == {
        "tumour/images/alone.png": ("no_mask", "tumour/images/alone.png has no mask beside it (masks/ or _mask)"),
        "tumour/masks/ghost.png": ("orphan_mask", "tumour/masks/ghost.png is a mask without its image"),
        "tumour/images/small.png": ("bad_mask", "the mask is 32x32, its image 64x64"),
        "tumour/images/three.png": ("bad_mask", "mask values 2 are outside the classes 0..1 (background, lesion)"),
        "tumour/images/colour.png": ("bad_mask", "the mask is in colour; it must hold one class index per pixel"),
    }
    assert (summary.stored, summary.masks) == (1, 1)


def test_masks_in_a_zip_are_paired_too(tmp_path: Path, settings: Settings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/tumour/images/a.png", png_bytes(seed=7))
        archive.writestr("set/tumour/masks/a.png", encode(_lesion(), "PNG"))
    (tmp_path / "set.zip").write_bytes(buffer.getvalue())
    summary = ingest(tmp_path / "set.zip", settings)
    assert (summary.seen, summary.stored, summary.masks) == (1, 1, 1)


def test_a_second_ingest_of_the_same_pairs_decides_nothing(tmp_path: Path, settings: Settings) -> None:
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=2, size=64, seed=3, masks=True))
    ingest(tmp_path / "src", settings)
    again = ingest(tmp_path / "src", settings)
    assert (again.new, again.stored, again.masks) == (0, 4, 4)


def test_a_mask_claiming_a_huge_size_is_refused_from_its_header(tmp_path: Path, settings: Settings) -> None:
    """Neither is decoded: Pillow refuses the bomb at open, the other is refused on the size in its header."""
    from tests.helpers import png_claiming_size

    for name, side in (("bomb", 60_000), ("big", 9_000)):
        write(tmp_path / "src" / "tumour" / "images" / f"{name}.png", png_bytes(seed=side))
        write(tmp_path / "src" / "tumour" / "masks" / f"{name}.png", png_claiming_size(side, side))
    summary = ingest(tmp_path / "src", settings)
    assert summary.by_reason == {"bad_mask": 2}
    details = {r["path"]: r["detail"] for r in summary.rejected}
    assert "decompression bomb" in details["tumour/images/bomb.png"]
    assert details["tumour/images/big.png"] == "the mask is 9000x9000, its image 64x64"


def test_a_mask_that_links_out_of_the_source_quarantines_its_image(tmp_path: Path, settings: Settings) -> None:
    secret = write(tmp_path / "outside" / "secret.png", encode(_lesion(), "PNG"))
    write(tmp_path / "src" / "tumour" / "images" / "a.png", png_bytes(seed=1))
    (tmp_path / "src" / "tumour" / "masks").mkdir(parents=True)
    (tmp_path / "src" / "tumour" / "masks" / "a.png").symlink_to(secret)
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.quarantined, summary.masks) == (1, 1, 0)
    [rejected] = summary.rejected
    assert rejected["reason"] == "bad_mask" and rejected["detail"].startswith("its mask tumour/masks/a.png: ")


def test_a_second_mask_of_one_image_ends_in_quarantine_not_lost(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "tumour" / "images" / "a.png", png_bytes(seed=1))
    write(tmp_path / "src" / "tumour" / "masks" / "a.png", encode(_lesion(), "PNG"))
    write(tmp_path / "src" / "tumour" / "masks" / "a.tif", encode(_lesion(), "TIFF"))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.quarantined, summary.masks) == (2, 1, 1, 1)
    [rejected] = summary.rejected
    assert rejected == {
        "path": "tumour/masks/a.tif",
        "reason": "orphan_mask",
        "detail": "tumour/masks/a.tif is a second mask of tumour/images/a (tumour/masks/a.png is the one used)",
    }
