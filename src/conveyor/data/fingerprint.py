"""Content fingerprints: sha256 of the bytes (identity) and a 256-bit difference hash of the pixels (near-duplicates).

Why 256 bits: on the real brain-MRI set a 64-bit hash put different patients' scans within 4-6 bits of each other;
at 256 bits every pair within 31 bits was the same scan (re-encoded, rescaled, re-cropped) and the next pair was
different scans at 40+ bits, so the default threshold is 32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from conveyor.preprocess.transforms import foreground_box

__all__ = ["HASH_BITS", "dhash", "hamming_within"]

HASH_BITS = 256
_SIDE = 16  # a 16 x 16 grid of left/right comparisons


def dhash(gray: np.ndarray) -> str:
    """256-bit difference hash of an image after trimming its black borders, as 64 hex digits.

    Args:
        gray: (H, W) float32 in [0, 1], as :func:`conveyor.preprocess.to_gray_unit` returns.
    """
    rows, cols = foreground_box(gray, 0.05)
    small = Image.fromarray(np.ascontiguousarray(gray[rows, cols]), mode="F").resize(
        (_SIDE + 1, _SIDE), Image.Resampling.BOX
    )
    arr = np.asarray(small)
    return np.packbits(arr[:, 1:] > arr[:, :-1]).tobytes().hex()


def _words(hashes: list[str]) -> np.ndarray:
    """(n, 4) uint64 words of hex hashes."""
    if not hashes:
        return np.zeros((0, 4), dtype=np.uint64)
    return np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint64).reshape(len(hashes), -1)


def hamming_within(query: list[str], pool: list[str], bits: int) -> np.ndarray:
    """Boolean matrix (len(query), len(pool)): True where two hashes differ in at most ``bits`` bits."""
    q, p = _words(query), _words(pool)
    distance = np.zeros((len(q), len(p)), dtype=np.uint16)
    for word in range(q.shape[1]):  # one 64-bit word at a time keeps the temporaries at len(q) x len(pool)
        distance += np.bitwise_count(q[:, word, None] ^ p[None, :, word])
    return distance <= bits
