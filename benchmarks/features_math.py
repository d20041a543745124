"""How long the feature maths takes per 128x128 image, against decoding the same image from PNG bytes.

Claim: diagrams for both filtrations plus every extractor's transform cost about as much as decoding the image, so
feature extraction does not dominate ingest or serving.

Images are seeded synthetic Gaussian blobs (optionally with pixel noise, which multiplies the number of persistence
bars), encoded once to 8-bit grayscale PNG in memory. The baseline, timed in the same run, is Pillow decoding those
bytes to a numpy array; every other row is a ratio to it. Each row is the best of ``--repeat`` passes over all images.

    PYTHONPATH=src python benchmarks/features_math.py [--n 2000] [--size 128] [--noise 0.0] [--repeat 3]

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from conveyor.features import BUNDLE_KEYS, EXTRACTORS, diagram_bundle, make_extractor


def make_images(n: int, size: int, noise: float, seed: int) -> list[np.ndarray]:
    """n uint8 (size, size) images: 1-5 Gaussian blobs of random centre, radius and brightness, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    images = []
    for _ in range(n):
        image = np.zeros((size, size))
        for _ in range(int(rng.integers(1, 6))):
            cy, cx = rng.uniform(0, size, 2)
            radius = rng.uniform(size / 25, size / 5)
            image += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        if noise > 0:
            image += rng.normal(0.0, noise, image.shape)
        image = (image - image.min()) / (image.max() - image.min())
        images.append(np.round(image * 255).astype(np.uint8))
    return images


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def best_ms_per_item(fn: Callable[[Any], object], items: Sequence[Any], repeat: int) -> float:
    """Best over ``repeat`` passes of the mean milliseconds of ``fn(item)``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1e3


def best_ms_per_item_batched(fn: Callable[[Sequence[Any]], object], items: Sequence[Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(items)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--noise", type=float, default=0.0, help="std of added pixel noise (before normalising)")
    parser.add_argument("--repeat", type=int, default=3, help="passes per row; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    raw = make_images(args.n, args.size, args.noise, args.seed)
    blobs = [png_bytes(image) for image in raw]
    images = [(decode(b) / np.float32(255)).astype(np.float32) for b in blobs]
    bundles = [diagram_bundle(image) for image in images]
    bars = np.array([[len(bundle[key]) for key in BUNDLE_KEYS] for bundle in bundles])
    extractors = {}
    for name in EXTRACTORS:
        extractor = make_extractor(name)
        extractors[name] = extractor.fit(images if extractor.input_kind == "image" else bundles)

    def inputs(name: str) -> list[Any]:
        return images if extractors[name].input_kind == "image" else bundles  # type: ignore[return-value]

    rows: list[tuple[str, float, float | None]] = []
    baseline = best_ms_per_item(decode, blobs, args.repeat)
    rows.append(("decode PNG (Pillow), baseline", baseline, None))
    jpegs = [jpeg_bytes(image) for image in raw]
    rows.append(("decode JPEG q90 (Pillow), for reference", best_ms_per_item(decode, jpegs, args.repeat), None))
    rows.append(("diagrams, both filtrations, H0+H1", best_ms_per_item(diagram_bundle, images, args.repeat), None))
    for name, extractor in extractors.items():
        single = best_ms_per_item(lambda x, e=extractor: e.transform([x]), inputs(name), args.repeat)
        batch = best_ms_per_item_batched(extractor.transform, inputs(name), args.repeat)
        rows.append((f"{name} ({extractor.get_feature_names_out().shape[0]} cols)", single, batch))

    def full_vector(image: np.ndarray) -> None:
        bundle = diagram_bundle(image)
        for extractor in extractors.values():
            extractor.transform([image] if extractor.input_kind == "image" else [bundle])

    rows.append(("FULL: diagrams + all extractors", best_ms_per_item(full_vector, images, args.repeat), None))

    print(f"{args.n} synthetic {args.size}x{args.size} images, noise {args.noise}, best of {args.repeat}")
    print(
        "bars per image (mean, sub_h0 sub_h1 sup_h0 sup_h1): "
        + " ".join(f"{v:.1f}" for v in bars.mean(axis=0))
        + f"; PNG {np.mean([len(b) for b in blobs]) / 1024:.1f} KiB"
    )
    print()
    print(f"{'stage':<40} {'ms/image':>9} {'x decode':>9} {'batched ms/image':>17}")
    print("-" * 78)
    for label, ms, batched in rows:
        batched_text = f"{batched:17.4f}" if batched is not None else " " * 17
        print(f"{label:<40} {ms:9.4f} {ms / baseline:9.2f} {batched_text}")
    print()
    print("ms/image: one image per call (serving); batched: one call over all images (ingest), per image.")


if __name__ == "__main__":
    main()
