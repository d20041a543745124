"""Image quality at ingest: the measures, the rules (warn or quarantine), and what the summary and the store say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sqlalchemy import select

from conveyor.config import QualitySettings, Settings
from conveyor.data.decode import DecodedImage
from conveyor.data.facts import inspect_decoded, judge_quality, quality_measures
from conveyor.data.ingest import ingest
from conveyor.store.db import session_scope
from conveyor.store.models import Image
from conveyor.workspace import open_workspace
from tests.helpers import encode, write


def checkerboard(size: int = 64) -> np.ndarray:
    return ((np.indices((size, size)).sum(axis=0) % 2) * 255).astype(np.uint8)


def inspected(pixels: np.ndarray):  # type: ignore[no-untyped-def]
    return inspect_decoded(DecodedImage(pixels, "png", "L", 8, 1))


def test_a_one_pixel_checkerboard_has_laplacian_variance_16_and_half_its_pixels_clipped_each_way() -> None:
    measures = quality_measures(inspected(checkerboard()))
    assert measures == {"blur": 16.0, "contrast": 0.5, "dark_clipped": 0.5, "bright_clipped": 0.5, "resolution": 64.0}


def test_blurring_lowers_the_sharpness_measure() -> None:
    sharp = checkerboard()
    blurred = gaussian_filter(sharp.astype(np.float64), 2).astype(np.uint8)
    assert inspected(blurred).blur < inspected(sharp).blur / 100


def test_a_constant_image_has_no_sharpness() -> None:
    assert inspected(np.full((40, 40), 128, np.uint8)).blur == 0.0


def test_a_warn_rule_flags_and_a_quarantine_rule_refuses_with_the_measure_and_bound() -> None:
    rules = QualitySettings.model_validate(
        {"contrast": {"min": 0.6, "action": "warn"}, "bright_clipped": {"max": 0.25, "action": "quarantine"}}
    )
    assert judge_quality(inspected(checkerboard()), rules) == (
        ["contrast"],
        "bright_clipped 0.5 is above ingest.quality.bright_clipped.max 0.25",
    )


def test_no_rule_no_flag() -> None:
    assert judge_quality(inspected(checkerboard()), QualitySettings()) == ([], None)


def test_an_unknown_rule_key_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="minimum"):
        QualitySettings.model_validate({"blur": {"minimum": 0.1}})


def _quality_settings(tmp_path: Path, action: str) -> Settings:
    quality = {"blur": {"min": 0.001, "action": action}}
    return Settings(home=tmp_path / "ws", ingest={"min_side": 32, "quality": quality})  # type: ignore[arg-type]


def _blurred_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(gaussian_filter(rng.uniform(0, 255, (64, 64)), 6).astype(np.uint8), "PNG")


def test_a_blurred_image_is_quarantined_as_low_quality_when_the_rule_says_so(tmp_path: Path) -> None:
    settings = _quality_settings(tmp_path, "quarantine")
    write(tmp_path / "src" / "a" / "sharp.png", encode(checkerboard(), "PNG"))
    write(tmp_path / "src" / "a" / "soft.png", _blurred_png(1))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.stored, summary.quarantined, summary.by_reason) == (1, 1, {"low_quality": 1})
    [rejected] = summary.rejected
    assert rejected["path"] == "a/soft.png"
    assert rejected["detail"].startswith("blur ") and rejected["detail"].endswith(
        "is below ingest.quality.blur.min 0.001"
    )


def test_a_warn_rule_stores_the_image_flagged_and_counts_it(tmp_path: Path) -> None:
    settings = _quality_settings(tmp_path, "warn")
    write(tmp_path / "src" / "a" / "sharp.png", encode(checkerboard(), "PNG"))
    write(tmp_path / "src" / "a" / "soft.png", _blurred_png(1))
    write(tmp_path / "src" / "b" / "soft.png", _blurred_png(2))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.stored, summary.quarantined, summary.quality_flagged) == (3, 0, {"blur": 2})
    with session_scope(open_workspace(settings)) as session:
        flags = sorted(str(f) for (f,) in session.execute(select(Image.quality_flags)))
    assert flags == ["None", "blur", "blur"]
    again = ingest(tmp_path / "src", settings)  # the whole source, as every count of the summary
    assert (again.new, again.quality_flagged) == (0, {"blur": 2})


def test_every_stored_image_has_its_measures(tmp_path: Path, settings: Settings) -> None:
    from conveyor.data.decode import DecodeLimits
    from conveyor.data.facts import inspect_image

    data = encode(checkerboard(), "PNG")
    write(tmp_path / "src" / "a" / "x.png", data)
    ingest(tmp_path / "src", settings)
    with session_scope(open_workspace(settings)) as session:
        [stored] = session.execute(select(Image.blur, Image.dark_clipped, Image.bright_clipped)).all()
    assert tuple(stored) == (16.0, 0.5, 0.5)
    inspected = inspect_image(data, DecodeLimits())
    assert (inspected.blur, inspected.dark_clipped, inspected.bright_clipped) == (16.0, 0.5, 0.5)
