"""Video clips: recognised by content, decoded with PyAV (FFmpeg's libraries), sampled into frames.

A clip becomes images: frames taken at ``fps`` per second of the clip's time (the first frame at or after each
0, 1/fps, 2/fps, ... seconds), or ``count`` frames evenly spaced over its duration, each an RGB array with its time.
Ingest stores each frame as a PNG image tied to its clip (and grouped by it, so a clip's frames stay on one side of
the split); the server answers a clip with the mean of its frames' probabilities.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from conveyor.errors import InvalidImageError

__all__ = [
    "CLIP_AGGREGATIONS",
    "VIDEO_FORMATS",
    "Frame",
    "clip_probabilities",
    "encode_png",
    "sample_frames",
    "sniff_video",
]

CLIP_AGGREGATIONS = ("mean", "max", "vote")

VIDEO_FORMATS = ("mp4", "mov", "avi", "mkv")

_MP4_BRANDS_QT = (b"qt  ",)


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its time in the clip (seconds) and its pixels, (H, W, 3) uint8."""

    time: float
    pixels: np.ndarray


def sniff_video(data: bytes) -> str | None:
    """The container of a video clip from its first bytes (``mp4``, ``mov``, ``avi``, ``mkv``), or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mov" if data[8:12] in _MP4_BRANDS_QT else "mp4"
    if len(data) >= 8 and data[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "mov"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    return None


def sample_frames(
    data: bytes, *, fps: float | None = 2.0, count: int | None = None, max_frames: int = 600, max_pixels: int = 10**8
) -> list[Frame]:
    """The frames of a clip: ``count`` evenly spaced over its duration when given, else ``fps`` per second.

    Raises:
        InvalidImageError: ``corrupt_video`` (PyAV cannot open or decode it), ``empty_video`` (no video stream or no
            frame), ``too_many_pixels`` (a frame over ``max_pixels``), ``too_long`` (more than ``max_frames`` sampled).
    """
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:  # PyAV raises its own errors, and anything on a hostile header
        raise InvalidImageError("corrupt_video", f"the clip cannot be opened: {_short(exc)}") from exc
    try:
        if not container.streams.video:
            raise InvalidImageError(
                "empty_video", "the file holds no readable video stream (a cut-off MP4 loses the index at its end)"
            )
        stream = container.streams.video[0]
        if stream.width * stream.height > max_pixels:
            raise InvalidImageError(
                "too_many_pixels", f"{stream.width}x{stream.height} frames exceed the limit of {max_pixels:,} pixels"
            )
        targets: list[float] = []
        if count is not None:
            duration = _duration(container, stream)
            if duration is None:
                raise InvalidImageError("corrupt_video", "the clip states no duration to space frames over")
            targets = [duration * (k + 0.5) / count for k in range(count)]
        step = 1.0 / float(fps or 2.0)
        next_time, next_target = (targets[0] if targets else 0.0), 0
        frames: list[Frame] = []
        for decoded in container.decode(stream):
            time = float(decoded.time) if decoded.time is not None else len(frames) * step
            if time + 1e-6 < next_time:
                continue
            frames.append(Frame(time, decoded.to_ndarray(format="rgb24")))
            if len(frames) > max_frames:
                raise InvalidImageError(
                    "too_long", f"more than {max_frames} frames at the sampling rate (ingest.video.max_frames)"
                )
            if targets:  # a frame that covers several sample times is taken once
                while next_target < len(targets) and targets[next_target] <= time + 1e-6:
                    next_target += 1
                if next_target == len(targets):
                    break
                next_time = targets[next_target]
            else:
                while next_time <= time + 1e-6:
                    next_time += step
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError("corrupt_video", f"the clip cannot be decoded: {_short(exc)}") from exc
    finally:
        container.close()
    if not frames:
        raise InvalidImageError("empty_video", "no frame could be decoded")
    return frames


def clip_probabilities(frames: np.ndarray, how: str = "mean") -> np.ndarray:
    """A clip's class probabilities from its frames' (n, k): ``mean`` of them; ``max`` per class, renormalised (an
    event seen clearly in one frame counts); ``vote``: the share of frames whose answer is each class.

    Raises:
        ValueError: an unknown aggregation, or no frame.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if len(frames) == 0:
        raise ValueError("a clip without frames has no probabilities")
    if how == "mean":
        return frames.mean(axis=0)
    if how == "max":
        top = frames.max(axis=0)
        return top / top.sum()
    if how == "vote":
        return np.bincount(frames.argmax(axis=1), minlength=frames.shape[1]) / len(frames)
    raise ValueError(f"unknown clip aggregation {how!r}; one of {CLIP_AGGREGATIONS}")


def encode_png(pixels: np.ndarray) -> bytes:
    """A frame as PNG bytes (lossless: the stored image is exactly the decoded frame)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _duration(container: object, stream: object) -> float | None:
    """Seconds of the clip: the stream's duration, else the container's; None when neither says."""
    value = getattr(stream, "duration", None)
    base = getattr(stream, "time_base", None)
    if value is not None and base is not None:
        return float(value * base)
    whole = getattr(container, "duration", None)
    return None if whole is None else float(whole) / 1_000_000


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
