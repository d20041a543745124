"""Splits: stratified, hash-ordered, decided once, near-duplicates on one side."""

from __future__ import annotations

import hashlib
from collections import Counter

from conveyor.data.split import Assigned, Candidate, assign_splits, fold_groups


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def distinct_hash(i: int) -> str:
    """Hashes far apart from each other (>= 64 bits), so no two candidates are near-duplicates."""
    return hashlib.sha256(f"p{i}".encode()).hexdigest()


def test_each_class_gets_its_test_share() -> None:
    candidates = [Candidate(sha(i), "a", distinct_hash(i)) for i in range(100)]
    candidates += [Candidate(sha(1000 + i), "b", distinct_hash(1000 + i)) for i in range(30)]
    splits = assign_splits(candidates, [], test_fraction=0.2, near_bits=0)
    counts = Counter((c.label, splits[c.sha256]) for c in candidates)
    assert counts == {("a", "test"): 20, ("a", "train"): 80, ("b", "test"): 6, ("b", "train"): 24}


def test_order_of_candidates_does_not_matter() -> None:
    candidates = [Candidate(sha(i), "a", distinct_hash(i)) for i in range(50)]
    forward = assign_splits(candidates, [], 0.2, 0)
    backward = assign_splits(list(reversed(candidates)), [], 0.2, 0)
    assert forward == backward


def test_new_images_fill_the_share_left_by_assigned_ones() -> None:
    assigned = [Assigned(sha(i), "a", distinct_hash(i), "train") for i in range(8)]
    candidates = [Candidate(sha(100 + i), "a", distinct_hash(100 + i)) for i in range(2)]
    splits = assign_splits(candidates, assigned, 0.2, near_bits=0)
    assert list(splits.values()) == ["test", "test"]  # 20% of 10 images is 2, and the 8 old ones are all train


def test_near_duplicate_of_a_test_image_goes_to_test() -> None:
    assigned = [Assigned(sha(1), "a", "00" * 32, "test")]
    near = "00" * 31 + "07"  # 3 bits away
    splits = assign_splits([Candidate(sha(2), "a", near, given_split="train")], assigned, 0.2, near_bits=4)
    assert splits == {sha(2): "test"}


def test_near_duplicates_among_new_images_share_a_side() -> None:
    group = [Candidate(sha(i), "a", "00" * 31 + f"{i:02x}") for i in range(1, 4)]  # within 2 bits of each other
    others = [Candidate(sha(100 + i), "a", distinct_hash(i)) for i in range(20)]
    splits = assign_splits(group + others, [], 0.2, near_bits=4)
    assert len({splits[c.sha256] for c in group}) == 1


def test_given_split_is_honoured() -> None:
    candidates = [Candidate(sha(i), "a", distinct_hash(i), given_split="test") for i in range(5)]
    candidates += [Candidate(sha(10 + i), "a", distinct_hash(10 + i), given_split="train") for i in range(5)]
    splits = assign_splits(candidates, [], 0.2, near_bits=0)
    assert [splits[c.sha256] for c in candidates] == ["test"] * 5 + ["train"] * 5


def test_given_test_wins_over_given_train_for_near_duplicates() -> None:
    pair = [Candidate(sha(1), "a", "00" * 32, "train"), Candidate(sha(2), "a", "00" * 31 + "01", "test")]
    assert assign_splits(pair, [], 0.2, near_bits=4) == {sha(1): "test", sha(2): "test"}


def test_no_candidates_gives_nothing() -> None:
    assert assign_splits([], [Assigned(sha(1), "a", "00" * 32, "train")], 0.2, 4) == {}


def test_a_patients_new_images_stay_together() -> None:
    """Ten patients of five slices each, no two slices alike: each patient is on one side, whole."""
    candidates = [
        Candidate(sha(p * 10 + k), "a", distinct_hash(p * 10 + k), group=f"g{p}") for p in range(10) for k in range(5)
    ]
    splits = assign_splits(candidates, [], test_fraction=0.2, near_bits=0)
    sides = {p: {splits[sha(p * 10 + k)] for k in range(5)} for p in range(10)}
    assert all(len(side) == 1 for side in sides.values())
    assert Counter(next(iter(side)) for side in sides.values()) == {"train": 8, "test": 2}


def test_a_new_image_of_a_known_patient_goes_to_the_patients_side() -> None:
    assigned = [Assigned(sha(i), "a", distinct_hash(i), "test" if i == 0 else "train", group=f"g{i}") for i in range(5)]
    candidates = [Candidate(sha(100), "a", distinct_hash(100), group="g0")]
    assert assign_splits(candidates, assigned, 0.2, near_bits=0) == {sha(100): "test"}


def test_fold_groups_join_a_patients_images_and_near_duplicates_transitively() -> None:
    base = distinct_hash(1)
    near = base[:-1] + ("0" if base[-1] != "0" else "1")  # one hex digit off: a few bits
    images = [
        Candidate(sha(1), "a", base),
        Candidate(sha(2), "a", near),  # near-duplicate of 1
        Candidate(sha(3), "a", distinct_hash(3), group="p"),
        Candidate(sha(4), "b", distinct_hash(4), group="p"),  # same patient as 3
        Candidate(sha(5), "b", distinct_hash(5)),
    ]
    assert fold_groups(images, near_bits=4).tolist() == [0, 0, 2, 2, 4]
