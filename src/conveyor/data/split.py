"""Decide each image's split once: hash-ordered, stratified per class, near-duplicates on one side.

An image's split never changes once assigned. New images are grouped with their near-duplicates (perceptual hash
within a few bits), among themselves and with images already assigned:

1. a group that touches an assigned image takes that image's split (``test`` if it touches both);
2. otherwise a group with a given split (a ``test/`` or ``train/`` folder) takes it, ``test`` winning;
3. otherwise groups of each class are taken in the order of their smallest sha256 and each goes to whichever split
   keeps that class's test share closest to ``test_fraction``.

So no copy of a test image is ever trained on, the order of files within a batch does not matter, and every class
holds its share of test images within one group.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from conveyor.data.fingerprint import hamming_within

__all__ = ["Assigned", "Candidate", "assign_splits"]

_CHUNK = 256  # query rows per distance matrix: 256 x 100,000 images is 50 MB


@dataclass(frozen=True)
class Candidate:
    """A new image waiting for its split."""

    sha256: str
    label: str
    phash: str
    given_split: str | None = None


@dataclass(frozen=True)
class Assigned:
    """An image whose split is already decided."""

    sha256: str
    label: str
    phash: str
    split: str


def assign_splits(
    candidates: list[Candidate], assigned: list[Assigned], test_fraction: float, near_bits: int
) -> dict[str, str]:
    """Return ``{sha256: "train" | "test"}`` for every candidate (see the module docstring for the rules)."""
    if not candidates:
        return {}
    groups = _near_duplicate_groups(candidates, near_bits)
    touched = _touched_splits(candidates, assigned, near_bits)

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for image in assigned:
        counts[image.label][image.split] += 1

    result: dict[str, str] = {}
    open_groups: list[list[Candidate]] = []
    for group in groups:
        forced = set().union(*(touched[c.sha256] for c in group)) or {c.given_split for c in group} - {None}
        if forced:
            split = "test" if "test" in forced else "train"
            for c in group:
                result[c.sha256] = split
                counts[c.label][split] += 1
        else:
            open_groups.append(group)

    open_groups.sort(key=lambda g: min(c.sha256 for c in g))
    for group in open_groups:
        label = Counter(c.label for c in group).most_common(1)[0][0]
        size = len(group)
        test, total = counts[label]["test"], counts[label]["test"] + counts[label]["train"]
        target = test_fraction * (total + size)
        split = "test" if abs(test + size - target) < abs(test - target) else "train"
        for c in group:
            result[c.sha256] = split
            counts[c.label][split] += 1
    return result


def _near_duplicate_groups(candidates: list[Candidate], near_bits: int) -> list[list[Candidate]]:
    """Connected components of the 'within near_bits' graph over the candidates (union-find)."""
    hashes = [c.phash for c in candidates]
    parent = list(range(len(candidates)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(candidates), _CHUNK):
        close = hamming_within(hashes[start : start + _CHUNK], hashes, near_bits)
        for i, j in zip(*np.nonzero(close), strict=True):
            a, b = find(int(i) + start), find(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[int, list[Candidate]] = defaultdict(list)
    for index, candidate in enumerate(candidates):
        members[find(index)].append(candidate)
    return list(members.values())


def _touched_splits(candidates: list[Candidate], assigned: list[Assigned], near_bits: int) -> dict[str, set[str]]:
    """For each candidate, the splits of the assigned images it is a near-duplicate of."""
    touched: dict[str, set[str]] = {c.sha256: set() for c in candidates}
    if not assigned:
        return touched
    query = [c.phash for c in candidates]
    pool = [a.phash for a in assigned]
    splits = np.array([a.split for a in assigned])
    for start in range(0, len(candidates), _CHUNK):
        close = hamming_within(query[start : start + _CHUNK], pool, near_bits)
        for i in np.flatnonzero(close.any(axis=1)):
            touched[candidates[start + int(i)].sha256].update(splits[close[i]].tolist())
    return touched
