"""Grouped splits on a set with repeated patients: what the split and the CV folds leak without groups.

Generates ``--patients`` patients (half with a tumour) of ``--slices`` slices each: one patient's slices share their
anatomy, lesion and scanner brightness, each with its own noise and a small shift (alike, but not near-duplicates by
the perceptual hash). Ingests the same files twice, into two workspaces: without groups, and with a labels CSV whose
``group`` column names the patient. Prints, for each: the test images, how many of them belong to a patient who also
has training images (a leak), and how many test images the grouped split moved; then, after ``conveyor train``
(race) in each, the winner's CV score against its test score.

Usage: python benchmarks/grouped_split.py [--patients 60] [--slices 6]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from conveyor.config import Settings
from conveyor.data.ingest import ingest
from conveyor.data.synthetic import render_slice
from conveyor.features.store import compute_features
from conveyor.store.db import session_scope
from conveyor.store.models import Image
from conveyor.training.train import train
from conveyor.workspace import open_workspace


def write_patients(root: Path, patients: int, slices: int, size: int = 96) -> dict[str, tuple[str, str]]:
    """``root/<label>/P<n>_s<k>.png``; returns relpath -> (label, patient)."""
    owner: dict[str, tuple[str, str]] = {}
    for p in range(patients):
        tumour = p % 2 == 1
        label = "tumour" if tumour else "no_tumour"
        anatomy = render_slice(np.random.default_rng(10_000 + p), size, tumour=tumour).astype(np.float32)
        scanner = np.random.default_rng(20_000 + p).uniform(-25, 25)  # this patient's scanner brightness
        for k in range(slices):
            rng = np.random.default_rng(30_000 + p * 100 + k)
            shifted = np.roll(anatomy, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            pixels = np.clip(shifted + scanner + rng.normal(0, 12, shifted.shape), 0, 255).astype(np.uint8)
            relpath = f"{label}/P{p:03d}_s{k}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(pixels).save(root / relpath)
            owner[relpath] = (label, f"P{p:03d}")
    return owner


def splits(settings: Settings) -> dict[str, str]:
    with session_scope(open_workspace(settings)) as session:
        return {r.sha256: str(r.split) for r in session.execute(select(Image.sha256, Image.split))}


def leaks(split_of: dict[str, str], patient_of: dict[str, str]) -> tuple[int, int]:
    """(test images, test images of a patient who also has training images)."""
    sides: dict[str, set[str]] = defaultdict(set)
    for sha, split in split_of.items():
        sides[patient_of[sha]].add(split)
    test = [sha for sha, split in split_of.items() if split == "test"]
    return len(test), sum(1 for sha in test if sides[patient_of[sha]] == {"train", "test"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--slices", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        owner = write_patients(root / "src", args.patients, args.slices)
        patient_of = {
            hashlib.sha256((root / "src" / relpath).read_bytes()).hexdigest(): patient
            for relpath, (_, patient) in owner.items()
        }
        csv = root / "labels.csv"
        csv.write_text("path,label,group\n" + "".join(f"{p},{lab},{g}\n" for p, (lab, g) in owner.items()))
        training = {"families": ["logreg", "svm", "random_forest"], "search": {"mode": "race"}}
        rows = {}
        for name, labels_csv in (("without groups", None), ("grouped by patient", csv)):
            settings = Settings(home=root / name.replace(" ", "_"), training=training)  # type: ignore[arg-type]
            ingest(root / "src", settings, labels_csv=labels_csv)
            compute_features(settings)
            began = time.perf_counter()
            result = train(settings)
            best = result.best
            test = getattr(result.calibrated, result.metric)
            rows[name] = (splits(settings), best.name, best.cv_score, best.cv_score_std, test, result.search.cv_groups,
                          time.perf_counter() - began)  # fmt: skip
    images = args.patients * args.slices
    print(f"\n{args.patients} patients x {args.slices} slices = {images} images; metric: {result.metric}")
    print(f"{'split':<20}{'test':>6}{'leaked':>8}  {'CV groups':>9}  {'winner':<26}{'CV score':>16}{'test':>8}{'s':>6}")
    for name, (split_of, pick, cv, cv_std, test, groups, seconds) in rows.items():
        n_test, leaked = leaks(split_of, patient_of)
        shown = "-" if groups is None else str(groups)
        print(f"{name:<20}{n_test:>6}{leaked:>8}  {shown:>9}  {pick:<26}{cv:>9.3f} ± {cv_std:.3f}{test:>8.3f}"
              f"{seconds:>6.0f}")  # fmt: skip
    plain, grouped = rows["without groups"][0], rows["grouped by patient"][0]
    moved = sum(1 for sha in plain if plain[sha] == "test" and grouped[sha] != "test")
    print(f"test images the grouped split moved to train: {moved} of {sum(s == 'test' for s in plain.values())}")
    for name, row in rows.items():
        print(f"{name}: CV - test = {row[2] - row[4]:+.3f}")


if __name__ == "__main__":
    main()
