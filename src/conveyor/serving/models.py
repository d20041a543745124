"""The model a server answers with: one registered version, loaded only if its artifacts are the ones registered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.config import Settings

__all__ = ["ServedModel", "load_version"]


@dataclass(frozen=True)
class ServedModel:
    """One registered version, loaded."""

    name: str
    version: int
    model: Any  # ConveyorModel

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def predict(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Probabilities (n, classes) of decoded images (the model's preprocessing, features and classifier)."""
        return np.asarray(self.model.predict_images([self.model.preprocessed(p) for p in pixels]), dtype=np.float64)


def load_version(settings: Settings, version: int) -> ServedModel:
    """Load one registered version of the model (by number, so what is loaded is what is reported), only if its
    artifacts still match the hashes recorded at registration.

    Raises:
        ModelIntegrityError: they do not (the refusal is in the audit log).
    """
    from conveyor.tracking.integrity import load_verified
    from conveyor.tracking.setup import configure_mlflow

    configure_mlflow(settings)
    inner = load_verified(settings, version).unwrap_python_model()
    return ServedModel(settings.model_name, version, inner)
