"""The registered segmentation model: image bytes in, a mask of class indices (and each class's area) out.

It carries the U-Net's weights and its spec (``segment_spec.json``: classes and the size images are resized to);
like the classifier, conveyor's installed code runs it. Input: a DataFrame with an ``image`` column (bytes or base64
text) or a ``path`` column; output: ``mask`` (a PNG of class indices, at the image's own size, base64) and one
``area_<class>`` column per class (pixels).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:  # MLflow is a dependency, but keep this module importable for type checks without it
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

__all__ = ["SegmentSpec", "SegmentationModel", "SegmentedRegion", "to_model_input"]


@dataclass(frozen=True)
class SegmentSpec:
    classes: list[str]
    size: tuple[int, int]
    dataset_version: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "size": list(self.size)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SegmentSpec:
        data = json.loads(text)
        return cls(list(data["classes"]), (int(data["size"][0]), int(data["size"][1])), str(data["dataset_version"]))


def to_model_input(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decoded pixels as the U-Net takes them: gray in [0, 1], resized to ``size`` (h, w), float32."""
    from conveyor.preprocess.transforms import resize, to_gray_unit

    return np.asarray(resize(to_gray_unit(pixels), size), dtype=np.float32)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask of class indices resized by nearest neighbour (no class is invented at a border)."""
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST), dtype=np.uint8)


class SegmentedRegion:
    """The region a U-Net draws (every class but the first, background), as :class:`conveyor.features.pipeline.Region`:
    what ``features.roi: segmentation`` computes features inside.

    Made from the weights file a segmentation model was registered with; its ``key`` is that file's sha256, so the
    feature store's region tables and a classifier that carries a copy of the file agree on which region they mean.
    It pickles as the file's bytes (the process pool's workers rebuild the network; each uses one thread there, as the
    pool already uses every core).
    """

    def __init__(self, weights: bytes, size: tuple[int, int], *, threads: int | None = None) -> None:
        import hashlib

        self.weights = weights
        self.size = (int(size[0]), int(size[1]))
        self.key = hashlib.sha256(weights).hexdigest()[:12]
        self.threads = threads
        self._network: Any = None

    @classmethod
    def from_file(cls, path: str | Path, size: tuple[int, int]) -> SegmentedRegion:
        return cls(Path(path).read_bytes(), size)

    def __getstate__(self) -> dict[str, Any]:
        return {"weights": self.weights, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["weights"], state["size"], threads=1)  # type: ignore[misc]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """A boolean mask of ``pixels`` (H, W): where the U-Net finds anything but background."""
        if self._network is None:
            import torch

            from conveyor.models.unet import UNetSegmenter

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            self._network = UNetSegmenter.from_state(torch.load(io.BytesIO(self.weights), weights_only=True))
        small = self._network.predict(to_model_input(pixels, self.size)[None])[0]
        return resize_mask(small, pixels.shape[0], pixels.shape[1]) > 0


class SegmentationModel(PythonModel):
    """MLflow pyfunc wrapper of :class:`conveyor.models.unet.UNetSegmenter`; :meth:`segment` is its interface."""

    def load_context(self, context: Any) -> None:
        import torch

        from conveyor.models.unet import UNetSegmenter

        self.spec = SegmentSpec.from_json(Path(context.artifacts["spec"]).read_text())
        self.weights = Path(context.artifacts["weights"]).read_bytes()  # the folder may be temporary
        state = torch.load(io.BytesIO(self.weights), weights_only=True)
        self.network = UNetSegmenter.from_state(state)

    def region(self) -> SegmentedRegion:
        """What this model segments, as the region features are computed in (``features.roi: segmentation``)."""
        return SegmentedRegion(self.weights, self.spec.size)

    def segment(self, data: bytes, limits: Any = None) -> tuple[np.ndarray, dict[str, int]]:
        """The mask of class indices at the image's own size, and each class's area in pixels.

        Raises:
            InvalidImageError: not a usable image.
        """
        from conveyor.data.decode import DecodeLimits, decode_image

        decoded = decode_image(data, limits or DecodeLimits())
        small = self.network.predict(to_model_input(decoded.pixels, self.spec.size)[None])[0]
        mask = resize_mask(small, decoded.height, decoded.width)
        counts = np.bincount(mask.ravel(), minlength=len(self.spec.classes))
        return mask, {name: int(counts[i]) for i, name in enumerate(self.spec.classes)}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from PIL import Image

        from conveyor.tracking.pyfunc import decode_inputs

        rows = []
        for data in decode_inputs(model_input):
            mask, areas = self.segment(data)
            buffer = io.BytesIO()
            Image.fromarray(mask).save(buffer, format="PNG")
            rows.append(
                {"mask": base64.b64encode(buffer.getvalue()).decode(), **{f"area_{k}": v for k, v in areas.items()}}
            )
        return pd.DataFrame(rows)
