"""Decide each image's split once: hash-ordered, stratified per class, a patient's images and near-duplicates on one
side; and the groups that cross-validation folds must not split.

An image's split never changes once assigned. New images are grouped with their near-duplicates (perceptual hash
within a few bits) and with the images of the same patient, clip or slide (``group_key``), among themselves and with
images already assigned:

1. a group that touches an assigned image takes that image's split (``test`` if it touches both);
2. otherwise a group with a given split (a ``test/`` or ``train/`` folder) takes it, ``test`` winning;
3. otherwise groups of each class are taken in the order of their smallest sha256 and each goes to whichever split
   keeps that class's test share closest to ``test_fraction``.

So no copy of a test image, and no image of a test patient, is ever trained on, the order of files within a batch
does not matter, and every class holds its share of test images within one group.

:func:`fold_groups` gives the same grouping over the images of one split, for ``StratifiedGroupKFold``: a fold that
holds out one slice of a patient, or one of two near-copies, while training on the other scores a memory, not a model.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conveyor.data.fingerprint import hamming_within

__all__ = ["Assigned", "Candidate", "assign_splits", "fold_groups"]

_CHUNK = 256  # query rows per distance matrix: 256 x 100,000 images is 50 MB


@dataclass(frozen=True)
class Candidate:
    """A new image waiting for its split."""

    sha256: str
    label: str
    phash: str
    given_split: str | None = None
    group: str | None = None  # the salted key of its patient, clip or slide


@dataclass(frozen=True)
class Assigned:
    """An image whose split is already decided."""

    sha256: str
    label: str
    phash: str
    split: str
    group: str | None = None


def assign_splits(
    candidates: list[Candidate], assigned: list[Assigned], test_fraction: float, near_bits: int
) -> dict[str, str]:
    """Return ``{sha256: "train" | "test"}`` for every candidate (see the module docstring for the rules)."""
    if not candidates:
        return {}
    groups = _near_duplicate_groups(candidates, near_bits)
    touched = _touched_splits(candidates, assigned, near_bits)
    assigned_groups: dict[str, set[str]] = defaultdict(set)
    for image in assigned:
        if image.group is not None:
            assigned_groups[image.group].add(image.split)
    for c in candidates:
        if c.group is not None:
            touched[c.sha256] |= assigned_groups.get(c.group, set())

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
    """Connected components of the 'within near_bits or same group' graph over the candidates."""
    members: dict[int, list[Candidate]] = defaultdict(list)
    for candidate, component in zip(candidates, _components(candidates, near_bits), strict=True):
        members[int(component)].append(candidate)
    return list(members.values())


def fold_groups(images: Sequence[Candidate | Assigned], near_bits: int) -> np.ndarray:
    """One integer per image: images of one patient, clip or slide, and near-duplicates (transitively), share it."""
    return _components(images, near_bits)


def _components(images: Sequence[Candidate | Assigned], near_bits: int) -> np.ndarray:
    """Union-find over 'perceptual hashes within near_bits' and 'same group': each image's component (its smallest
    member's index)."""
    hashes = [c.phash for c in images]
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for start in range(0, len(images), _CHUNK):
        close = hamming_within(hashes[start : start + _CHUNK], hashes, near_bits)
        for i, j in zip(*np.nonzero(close), strict=True):
            union(int(i) + start, int(j))
    first_of: dict[str, int] = {}
    for index, image in enumerate(images):
        if image.group is not None:
            union(index, first_of.setdefault(image.group, index))
    return np.array([find(i) for i in range(len(images))], dtype=np.int64)


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
