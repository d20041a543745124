"""Video clips: recognised by content, sampled into frames, ingested as images tied to their clip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.video import sample_frames, sniff_video
from conveyor.errors import InvalidImageError
from conveyor.store.db import session_scope
from conveyor.store.models import Image
from conveyor.workspace import open_workspace
from tests.helpers import blob_clip, encode_clip, png_bytes, write


def _gray_frames(n: int, size: int = 32) -> list[np.ndarray]:
    return [np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)]


@pytest.mark.parametrize(
    ("container", "codec", "expected"), [("mp4", "mpeg4", "mp4"), ("avi", "mjpeg", "avi"), ("matroska", "mpeg4", "mkv")]
)
def test_clips_are_recognised_by_content(container: str, codec: str, expected: str) -> None:
    assert sniff_video(encode_clip(_gray_frames(3), container=container, codec=codec)) == expected


def test_an_image_is_not_a_clip() -> None:
    assert sniff_video(png_bytes()) is None


def test_frames_are_taken_at_the_configured_rate() -> None:
    frames = sample_frames(blob_clip(True, seconds=2.0, fps=10), fps=2.0)
    assert [round(f.time, 3) for f in frames] == [0.0, 0.5, 1.0, 1.5]
    assert frames[0].pixels.shape == (64, 64, 3) and frames[0].pixels.dtype == np.uint8


def test_or_a_count_of_frames_evenly_spaced() -> None:
    frames = sample_frames(blob_clip(True, seconds=2.0, fps=10), fps=None, count=4)
    assert [round(f.time, 3) for f in frames] == [0.3, 0.8, 1.3, 1.8]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (blob_clip(True)[:400], "corrupt_video"),
        (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, "corrupt_video"),
    ],
)
def test_a_damaged_clip_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        sample_frames(data)
    assert caught.value.reason == reason


def test_a_clip_sampling_into_too_many_frames_is_too_long() -> None:
    with pytest.raises(InvalidImageError, match="more than 3 frames") as caught:
        sample_frames(blob_clip(False, seconds=2.0), fps=10.0, max_frames=3)
    assert caught.value.reason == "too_long"


def _frames_in_store(settings: Settings) -> list[tuple[str | None, float | None, str | None, str]]:
    with session_scope(open_workspace(settings)) as session:
        rows = session.execute(select(Image.clip_sha256, Image.clip_time, Image.group_key, Image.split))
        return [(r.clip_sha256, r.clip_time, r.group_key, str(r.split)) for r in rows]


def test_clips_are_ingested_as_frames_tied_to_their_clip(tmp_path: Path, settings: Settings) -> None:
    import hashlib

    clip = blob_clip(True, seed=1)
    write(tmp_path / "src" / "fall" / "a.mp4", clip)
    write(tmp_path / "src" / "fall" / "b.mp4", blob_clip(True, seed=2))  # every frame differs: none is deduplicated
    write(tmp_path / "src" / "upright" / "still.png", png_bytes(seed=3))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.stored, summary.clips, summary.frames) == (3, 3, 2, 8)
    frames = [row for row in _frames_in_store(settings) if row[0] == hashlib.sha256(clip).hexdigest()]
    assert sorted(round(float(t or 0), 3) for _, t, _, _ in frames) == [0.0, 0.5, 1.0, 1.5]
    assert len({(g, split) for _, _, g, split in frames}) == 1  # one group, one side of the split


def test_a_corrupt_clip_is_quarantined_and_nothing_of_it_stored(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "fall" / "cut.mp4", blob_clip(True)[:400])
    write(tmp_path / "src" / "fall" / "ok.png", png_bytes(seed=5))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.stored, summary.quarantined, summary.by_reason, summary.clips) == (1, 1, {"corrupt_video": 1}, 0)
    assert (settings.home / summary.rejected[0]["path"]).name != "" and summary.rejected[0]["path"] == "fall/cut.mp4"


def test_the_same_clip_again_is_a_duplicate_and_under_another_label_a_conflict(
    tmp_path: Path, settings: Settings
) -> None:
    clip = blob_clip(True, seed=7)
    write(tmp_path / "one" / "fall" / "a.mp4", clip)
    ingest(tmp_path / "one", settings)
    write(tmp_path / "two" / "fall" / "copy.mp4", clip)
    write(tmp_path / "two" / "upright" / "mislabelled.mp4", clip)
    summary = ingest(tmp_path / "two", settings)
    assert (summary.duplicates, summary.conflicts, summary.stored) == (1, 1, 0)


def test_a_clip_in_a_zip_is_taken_like_one_in_a_folder(tmp_path: Path, settings: Settings) -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fall/a.mp4", blob_clip(True, seed=9))
    (tmp_path / "clips.zip").write_bytes(buffer.getvalue())
    summary = ingest(tmp_path / "clips.zip", settings)
    assert (summary.stored, summary.clips, summary.frames) == (1, 1, 4)


def test_a_still_clip_gives_one_frame(tmp_path: Path, settings: Settings) -> None:
    still = [np.full((64, 64, 3), 90, np.uint8)] * 20
    still = [frame.copy() for frame in still]
    for frame in still:
        frame[10:40, 20:30] = 230
    # FFV1 is lossless: identical frames decode identically (a lossy codec's rate control varies them)
    write(tmp_path / "src" / "upright" / "still.mkv", encode_clip(still, fps=10, container="matroska", codec="ffv1"))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.stored, summary.clips, summary.frames) == (1, 1, 1)


def _audio_only_mp4() -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return buffer.getvalue()


def test_hostile_clips_each_end_quarantined_with_their_reason(tmp_path: Path, settings: Settings) -> None:
    """Audio only, frames over the pixel limit (checked before decoding), cut short, random bytes behind a header."""
    clip = blob_clip(True, seed=11)
    write(tmp_path / "src" / "fall" / "sound.mp4", _audio_only_mp4())
    write(tmp_path / "src" / "fall" / "huge.mp4", encode_clip([np.zeros((1024, 1280, 3), np.uint8)] * 2))
    write(tmp_path / "src" / "fall" / "cut.mp4", clip[: len(clip) * 4 // 5])
    write(tmp_path / "src" / "fall" / "noise.mp4", clip[:32] + np.random.default_rng(0).bytes(4000))
    summary = ingest(tmp_path / "src", settings)  # settings: at most 1,000,000 pixels
    assert summary.seen == summary.quarantined == 4
    reasons = {r["path"]: r["reason"] for r in summary.rejected}
    assert reasons == {
        "fall/sound.mp4": "empty_video",
        "fall/huge.mp4": "too_many_pixels",
        "fall/cut.mp4": "empty_video",
        "fall/noise.mp4": "corrupt_video",
    }


@pytest.mark.parametrize(
    ("how", "expected"),
    [("mean", [0.6, 0.4]), ("max", [0.9 / 1.6, 0.7 / 1.6]), ("vote", [2 / 3, 1 / 3])],
)
def test_a_clips_answer_from_its_frames(how: str, expected: list[float]) -> None:
    from conveyor.data.video import clip_probabilities

    frames = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    assert clip_probabilities(frames, how) == pytest.approx(expected)


def test_an_unknown_aggregation_is_refused() -> None:
    from conveyor.data.video import clip_probabilities

    with pytest.raises(ValueError, match="unknown clip aggregation 'median'"):
        clip_probabilities(np.ones((2, 2)) / 2, "median")


def test_a_clip_with_a_mask_is_refused_rather_than_its_mask_dropped(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "fall" / "images" / "a.mp4", blob_clip(True, seed=12))
    write(tmp_path / "src" / "fall" / "masks" / "a.png", png_bytes(seed=12))
    summary = ingest(tmp_path / "src", settings)
    assert (summary.seen, summary.quarantined, summary.clips) == (1, 1, 0)
    assert summary.rejected[0]["reason"] == "bad_mask"


def test_a_clip_of_blank_frames_is_empty(tmp_path: Path, settings: Settings) -> None:
    write(tmp_path / "src" / "upright" / "dark.mp4", encode_clip([np.zeros((64, 64, 3), np.uint8)] * 10))
    summary = ingest(tmp_path / "src", settings)
    assert summary.rejected[0]["reason"] == "empty_video"
    assert summary.rejected[0]["detail"] == "none of its 2 sampled frames is a usable image"  # 1 s at 2 fps
