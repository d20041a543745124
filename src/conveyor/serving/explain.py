"""Why the model answered as it did, for one image.

Three views, each computed on the image as the model sees it (preprocessed):

* **Where** (every model): an occlusion map (Captum's ``Occlusion``): a square patch at a time is replaced by the
  image's local median (:func:`local_median`: what stands out from its surroundings is taken away, the rest kept) and
  the drop in the answered class's probability is the patch's weight, so the map shows where the evidence lies
  whatever the model (a network on pixels or a classifier on topological features: each occluded copy
  goes through the model's own pipeline).
* **Shape** (models on topological features): the image's persistence diagrams (sublevel and superlevel, H0 and H1)
  and its most persistent features located on the image (the pixel where each is born and where it dies, from gudhi's
  cubical complex).
* **Which features** (models on features): per extractor group, how much the answered class's probability falls when
  that group sees a blank image (the image's mean everywhere) instead of this one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Explanation", "diagrams_png", "explain", "overlay_png", "persistent_regions"]


@dataclass
class Explanation:
    """What :func:`explain` found; ``heatmap`` and ``image`` are (H, W) in the preprocessed image's frame."""

    label: str
    probabilities: dict[str, float]
    image: np.ndarray
    heatmap: np.ndarray
    patch: int
    regions: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] | None = None
    bundle: dict[tuple[str, int], np.ndarray] | None = None


def explain(model: Any, data: bytes, limits: Any, *, patches: int = 8, top_regions: int = 5) -> Explanation:
    """Explain the answer of ``model`` (a loaded :class:`~conveyor.tracking.pyfunc.ConveyorModel`) to an image file.

    Raises:
        InvalidImageError: the bytes are not a usable image (decoded under ``limits``, as the server's uploads are).
    """
    from conveyor.data.decode import decode_image

    image = model.preprocessed(decode_image(data, limits).pixels)
    proba = model.predict_images([image])[0]
    answer = int(np.argmax(proba))
    gray = image if image.ndim == 2 else image.mean(axis=2)
    heatmap, patch = _occlusion(model, image, answer, patches)
    explanation = Explanation(
        model.classes[answer], {c: float(p) for c, p in zip(model.classes, proba, strict=True)}, gray, heatmap, patch
    )
    if not model.takes_pixels and model.spec.extractors:
        from conveyor.features.extractors import EXTRACTORS
        from conveyor.features.persistence import diagram_bundle

        explanation.groups = _group_effects(model, image, answer)
        if any(EXTRACTORS[name].input_kind == "bundle" for name, _ in model.spec.extractors):
            explanation.bundle = diagram_bundle(gray)
            explanation.regions = persistent_regions(gray, top_regions)
    return explanation


def _occlusion(model: Any, image: np.ndarray, target: int, patches: int) -> tuple[np.ndarray, int]:
    """Captum's occlusion over ``patches`` x ``patches`` squares: the answered class's probability drop per pixel."""
    import torch
    from captum.attr import Occlusion

    def forward(batch: torch.Tensor) -> torch.Tensor:
        arrays = [np.asarray(x, dtype=np.float32) for x in batch.detach().cpu().numpy()]
        return torch.as_tensor(model.predict_images(arrays), dtype=torch.float64)

    side = max(1, min(image.shape[:2]) // patches)
    window = (side, side) if image.ndim == 2 else (side, side, image.shape[2])
    stride = (max(1, side // 2),) * 2 + (() if image.ndim == 2 else (image.shape[2],))  # overlapping: a lesion on a
    attributions = Occlusion(forward).attribute(  # border is still covered whole by one square
        torch.as_tensor(image[None], dtype=torch.float64), target=target, sliding_window_shapes=window,
        strides=stride, baselines=torch.as_tensor(local_median(image, 2 * side + 1)[None], dtype=torch.float64),
        perturbations_per_eval=32,
    )  # fmt: skip
    heat = attributions[0].numpy()
    return (heat if heat.ndim == 2 else heat.mean(axis=2)), side


def local_median(image: np.ndarray, width: int) -> np.ndarray:
    """Each pixel's median over a ``width`` square (per channel): the image with what is smaller than about half
    that width (a lesion, a spot) removed and larger structures (the brain, the background) kept. Occluding a patch
    with it takes away only what stands out from its surroundings."""
    from scipy.ndimage import median_filter

    size = (width, width) if image.ndim == 2 else (width, width, 1)
    return np.asarray(median_filter(image, size=size, mode="nearest"), dtype=image.dtype)


def _group_effects(model: Any, image: np.ndarray, target: int) -> list[dict[str, Any]]:
    """Per extractor group: the answered class's probability with this image, minus with that group's features taken
    from a blank image (the image's mean everywhere); largest first."""
    pipeline = model.pipeline
    blank = np.full_like(image, float(image.mean()))
    vectors = pipeline.vectors(pipeline.prepare([image, blank]))
    widths = [len(columns) for columns in pipeline.columns().values()]
    names = [name for name, _ in pipeline.extractors]
    base = float(model.predict_features(vectors[:1])[0, target])
    effects, start = [], 0
    for name, width in zip(names, widths, strict=True):
        changed = vectors[:1].copy()
        changed[0, start : start + width] = vectors[1, start : start + width]
        effects.append({"group": name, "effect": base - float(model.predict_features(changed)[0, target])})
        start += width
    return sorted(effects, key=lambda e: -abs(e["effect"]))


def persistent_regions(image: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` most persistent features of the image's sublevel and superlevel filtrations, each with the pixel
    (row, column) where it is born and where it dies (gudhi's cubical complex on the pixels as top cells). The one
    component that never dies (born at the image's darkest pixel, or brightest for superlevel: often the lesion) is
    capped at the filtration's top, as the diagrams are, and has no death pixel."""
    import gudhi

    found: list[dict[str, Any]] = []
    for filtration, values in (("sublevel", image), ("superlevel", 1.0 - image)):
        cells = np.asarray(values, dtype=np.float64)
        complex_ = gudhi.CubicalComplex(top_dimensional_cells=cells)
        complex_.compute_persistence()
        regular, essential = complex_.cofaces_of_persistence_pairs()
        flat = cells.ravel(order="F")  # gudhi numbers the top cells in Fortran order
        for birth in np.asarray(essential[0] if essential else []).ravel():  # H0's infinite bar: capped at the top
            by, bx = np.unravel_index(int(birth), cells.shape, order="F")
            found.append({
                "filtration": filtration, "dim": 0, "birth": float(flat[birth]), "death": float(flat.max()),
                "persistence": float(flat.max() - flat[birth]), "birth_pixel": [int(by), int(bx)],
                "death_pixel": None,
            })  # fmt: skip
        for dim, pairs in enumerate(regular):
            for birth, death in np.asarray(pairs).reshape(-1, 2):
                persistence = float(flat[death] - flat[birth])
                if persistence <= 0:
                    continue
                by, bx = np.unravel_index(int(birth), cells.shape, order="F")
                dy, dx = np.unravel_index(int(death), cells.shape, order="F")
                found.append({
                    "filtration": filtration, "dim": dim, "birth": float(flat[birth]), "death": float(flat[death]),
                    "persistence": persistence, "birth_pixel": [int(by), int(bx)], "death_pixel": [int(dy), int(dx)],
                })  # fmt: skip
    return sorted(found, key=lambda r: -float(r["persistence"]))[:top]


def overlay_png(explanation: Explanation, scale: int = 3) -> bytes:
    """The image in gray with the evidence for the answer in red (the positive part of the occlusion map) and the
    persistent features' birth pixels circled in blue, enlarged ``scale`` times."""
    from PIL import Image, ImageDraw

    gray = np.clip(explanation.image, 0.0, 1.0)
    heat = np.clip(explanation.heatmap, 0.0, None)
    weight = heat / heat.max() if heat.max() > 0 else heat
    rgb = np.stack([gray, gray, gray], axis=-1) * (1.0 - 0.6 * weight[..., None])
    rgb[..., 0] += 0.6 * weight
    picture = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    picture = picture.resize((gray.shape[1] * scale, gray.shape[0] * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    for region in explanation.regions:
        y, x = region["birth_pixel"]
        cy, cx, r = (y + 0.5) * scale, (x + 0.5) * scale, 2.5 * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(37, 99, 235), width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def diagrams_png(bundle: dict[tuple[str, int], np.ndarray]) -> bytes:
    """The four persistence diagrams: one panel per filtration, H0 and H1 in two colours, the diagonal drawn."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 3.4), dpi=100)
    for index, filtration in enumerate(("sublevel", "superlevel")):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.plot([0, 1], [0, 1], color="#9ca3af", linewidth=0.8)
        for dim, colour in ((0, "#2563eb"), (1, "#dc2626")):
            points = bundle[(filtration, dim)]
            axes.scatter(points[:, 0], points[:, 1], s=10, color=colour, label=f"H{dim} ({len(points)})")
        axes.set(title=filtration, xlabel="birth", ylabel="death", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
