"""The registered model: raw image bytes in, probabilities per class out.

It carries everything inference needs (preprocessing settings, the extractors and their parameters, the fitted
classifier, the class names) and runs :class:`~conveyor.features.pipeline.FeaturePipeline`, the code the feature
store ran, so serving computes exactly what training saw. Loaded once in ``load_context``.

Input: a DataFrame with a column ``image`` holding the file's bytes (base64 text is accepted too, as
``mlflow models serve`` receives it), or a column ``path``. Output: a DataFrame with ``label``, ``confidence`` and
one ``proba_<class>`` column per class.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

try:  # MLflow is a dependency, but keep this module importable for type checks without it
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

__all__ = ["ConveyorModel", "ModelSpec", "decode_inputs"]


INPUT_KINDS = ("features", "image", "both")
"""What a registered model takes: feature vectors, pixels, or both (a stack with a network among its bases)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is, stored as ``spec.json`` beside its classifier: what it takes (``input_kind``: feature
    vectors, pixels, or ``both``: a stack with a network among its bases), how an image becomes its input
    (``preprocess`` settings, ``extractors`` with their parameters), what it answers (``classes``; ``positive`` for
    two), and where it came from (``family``, ``extractor``, ``dataset_version``). ``roi``: for features computed
    inside a segmented region, its ``key`` and the U-Net's input ``size`` (the U-Net's weights travel with the model
    as the artifact ``roi_weights``)."""

    input_kind: Literal["features", "image", "both"]
    preprocess: dict[str, Any]
    extractors: list[tuple[str, dict[str, Any]]]
    classes: list[str]
    positive: str | None
    family: str
    extractor: str
    dataset_version: str
    roi: dict[str, Any] | None = None

    @property
    def region_key(self) -> str | None:
        """The key of the region its features are computed in (its feature tables' key), or None: the whole image."""
        return None if self.roi is None else str(self.roi["key"])

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "extractors": [list(e) for e in self.extractors]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec of ``spec.json``.

        Raises:
            ValueError: a field is missing or unknown.
        """
        data = json.loads(text)
        data.setdefault("roi", None)  # added later: models registered before it compute on the whole image
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"spec.json: fields {sorted(set(data) ^ names)} missing or unknown")
        if data["input_kind"] not in INPUT_KINDS:
            raise ValueError(f"spec.json: input_kind {data['input_kind']!r} is not one of {list(INPUT_KINDS)}")
        return cls(**{**data, "extractors": [(str(name), dict(params)) for name, params in data["extractors"]]})


def decode_inputs(model_input: pd.DataFrame) -> list[bytes]:
    """The image bytes of each row.

    Raises:
        ValueError: no ``image`` or ``path`` column, a value that is neither bytes nor base64, or an unreadable path.
    """
    if "image" in model_input.columns:
        out = []
        for index, value in enumerate(model_input["image"]):
            if isinstance(value, (bytes, bytearray, memoryview)):
                out.append(bytes(value))
            elif isinstance(value, str):
                try:
                    out.append(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError) as exc:
                    raise ValueError(f"row {index}: 'image' is text but not base64: {exc}") from exc
            else:
                raise ValueError(f"row {index}: 'image' must be bytes or base64 text, got {type(value).__name__}")
        return out
    if "path" in model_input.columns:
        try:
            return [Path(str(p)).read_bytes() for p in model_input["path"]]
        except OSError as exc:
            raise ValueError(f"cannot read an input path: {exc}") from exc
    raise ValueError(f"the input needs a column 'image' (bytes or base64) or 'path', got {list(model_input.columns)}")


class ConveyorModel(PythonModel):
    """MLflow pyfunc model wrapping conveyor's preprocessing, features and a fitted classifier.

    Its interface for serving and monitoring: :meth:`image` (bytes to the image it takes), :meth:`preprocessed`
    (decoded pixels to the same), :meth:`predict_images` and :meth:`predict_features` (stored feature vectors, in the
    order of ``spec.extractors``); :attr:`classes` and :attr:`spec`. Nothing else of it is for callers.
    """

    def load_context(self, context: Any) -> None:
        import joblib

        from conveyor.config import PreprocessSettings
        from conveyor.features.pipeline import FeaturePipeline

        self.spec = ModelSpec.from_json(Path(context.artifacts["spec"]).read_text())
        self.classifier = joblib.load(context.artifacts["classifier"])
        self.classes: list[str] = list(self.spec.classes)
        region = None
        if self.spec.roi is not None:
            from conveyor.tracking.segmentation_model import SegmentedRegion

            size = self.spec.roi["size"]
            region = SegmentedRegion.from_file(context.artifacts["roi_weights"], (int(size[0]), int(size[1])))
            if region.key != self.spec.region_key:
                raise ValueError(f"roi_weights: key {region.key}, but the model was trained in {self.spec.region_key}")
        self.pipeline = FeaturePipeline(
            PreprocessSettings(**self.spec.preprocess), list(self.spec.extractors), region=region
        )
        self.conformal = None  # a model registered without a calibration part gives no prediction sets
        if "conformal" in context.artifacts:
            from conveyor.models.conformal import MondrianConformal

            self.conformal = MondrianConformal.from_json(Path(context.artifacts["conformal"]).read_text())

    def prediction_sets(self, proba: np.ndarray, coverage: float) -> list[list[str]] | None:
        """Each answer's prediction set at ``coverage`` (most probable first); None for a model without calibration."""
        return None if self.conformal is None else self.conformal.labelled_sets(proba, coverage)

    @property
    def takes_pixels(self) -> bool:
        """A network on the preprocessed pixels (colour kept when the settings keep it), alone or in a stack: not
        feature vectors alone."""
        return self.spec.input_kind != "features"

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from conveyor.errors import InvalidImageError

        try:
            blobs = decode_inputs(model_input)
            images = [self.image(blob) for blob in blobs]
        except (ValueError, InvalidImageError) as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        proba = self.predict_images(images)
        return self.to_frame(proba)

    def image(self, data: bytes) -> np.ndarray:
        """The preprocessed image this model takes, from an image file's bytes.

        Raises:
            InvalidImageError: not a usable image.
        """
        return self.pipeline.image(data, colour=self.takes_pixels)

    def preprocessed(self, pixels: np.ndarray) -> np.ndarray:
        """The preprocessed image this model takes, from decoded pixels."""
        return self.pipeline.preprocessed(pixels, colour=self.takes_pixels)

    def predict_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities (n, classes) of preprocessed images."""
        if not images:
            return np.empty((0, len(self.classes)))
        if self.spec.input_kind == "image":
            return self._proba(np.stack(images))
        if self.spec.input_kind == "both":
            from conveyor.models.stacking import ImagesAndFeatures
            from conveyor.preprocess.transforms import to_gray_unit

            gray = [to_gray_unit(image) if image.ndim == 3 else image for image in images]  # what topology reads
            return self._proba(ImagesAndFeatures(np.stack(images), self.pipeline.vectors(self.pipeline.prepare(gray))))
        return self._proba(self.pipeline.vectors(self.pipeline.prepare(images)))

    def predict_features(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) of feature vectors (a feature model; the store's columns for its extractors)."""
        if self.takes_pixels:
            takes = "pixels" if self.spec.input_kind == "image" else "pixels and features"
            raise ValueError(f"this model takes {takes}, not feature vectors alone")
        return self._proba(np.asarray(vectors, dtype=np.float64))

    def _proba(self, inputs: Any) -> np.ndarray:
        import sklearn

        # The inputs are our own finite feature vectors: re-checking them on every call was most of a request.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return np.asarray(self.classifier.predict_proba(inputs), dtype=np.float64)

    def to_frame(self, proba: np.ndarray) -> pd.DataFrame:
        best = proba.argmax(axis=1) if len(proba) else np.empty(0, dtype=int)
        frame = pd.DataFrame(
            {
                "label": [self.classes[i] for i in best],
                "confidence": proba.max(axis=1) if len(proba) else np.empty(0),
            }
        )
        for index, name in enumerate(self.classes):
            frame[f"proba_{name}"] = proba[:, index] if len(proba) else np.empty(0)
        return frame
