"""Builders of test images and files, all made in memory or under tmp_path."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A (height, width) uint8 image that is neither blank nor the same for two seeds."""
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.float64)
    return ((base / base.max()) * 200 + rng.integers(0, 40, (height, width))).astype(np.uint8)


def pattern(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A (height, width) uint8 image of random 8x8 blocks: two seeds give perceptually different pictures."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(20, 235, (8, 8)).astype(np.uint8)
    tiled = np.kron(blocks, np.ones((height // 8 + 1, width // 8 + 1), dtype=np.uint8))
    return np.ascontiguousarray(tiled[:height, :width])


def encode(pixels: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_bytes(height: int = 64, width: int = 64, seed: int = 0) -> bytes:
    """A PNG of :func:`pattern`: distinct seeds are distinct images, not near-duplicates."""
    return encode(pattern(height, width, seed), "PNG")


def png_claiming_size(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    data = bytearray(png_bytes(32, 32))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pydicom_file(name: str) -> bytes:
    """A real DICOM file that pydicom ships."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    assert found is not None, name
    return Path(str(found)).read_bytes()


def dicom_without_bits_allocated() -> bytes:
    """pydicom's CT_small.dcm with its BitsAllocated element removed: a header pydicom cannot read pixels from."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.BitsAllocated
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def encode_clip(frames: list[np.ndarray], fps: int = 10, container: str = "mp4", codec: str = "mpeg4") -> bytes:
    """A video clip of ``frames`` ((H, W, 3) uint8, even sides), encoded with PyAV in memory."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = {"mjpeg": "yuvj420p", "ffv1": "bgr0"}.get(codec, "yuv420p")
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def blob_clip(falls: bool, seconds: float = 2.0, fps: int = 10, size: int = 64, seed: int = 0) -> bytes:
    """A bright upright blob in a room of its own (a textured background per clip) that either falls over (lies down
    near the floor) or stays upright."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    room = gaussian_filter(rng.normal(size=(size, size)), 3)
    room = 30 + 60 * (room - room.min()) / (np.ptp(room) + 1e-9)
    frames = []
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:size, 0:size]
    cx = size / 2 + rng.uniform(-10, 10)
    for i in range(n):
        progress = min(1.0, i / (n * 0.6)) if falls else 0.0
        height = size * (0.35 - 0.25 * progress)  # half-height shrinks as it lies down
        width = size * (0.08 + 0.25 * progress)
        cy = size * (0.5 + 0.3 * progress)
        inside = ((yy - cy) / height) ** 2 + ((xx - cx) / width) ** 2 < 1
        gray = np.where(inside, 220, room) + rng.normal(0, 3, (size, size))
        frames.append(np.stack([gray.clip(0, 255).astype(np.uint8)] * 3, axis=-1))
    return encode_clip(frames, fps=fps)
