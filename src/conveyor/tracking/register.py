"""Registration: log a trained classifier as conveyor's pyfunc model, register it, and give it its alias.

The model is its artifacts (the fitted classifier, ``spec.json``) and a pinned requirement on the conveyor that made
it, whose installed package runs it, as an MLflow flavour's model needs its library: no copy of the package travels
with it, so loading it leaves ``sys.path`` alone and copies two files, not the whole package.

The model's pip requirements are written out (the installed versions of what inference imports) instead of letting
MLflow infer them: its inference loads the model in a subprocess and took 10 of the 11 seconds of a registration.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from conveyor.config import Settings
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.models.conformal import MondrianConformal
    from conveyor.tracking.pyfunc import ModelSpec
    from conveyor.tracking.segmentation_model import SegmentedRegion

__all__ = ["INFERENCE_PACKAGES", "PARAMS_TAG", "model_requirements", "params_key", "register_model"]

# What the pyfunc model imports to answer (the network's packages only for an image model).
INFERENCE_PACKAGES = (
    "mlflow", "numpy", "pandas", "scikit-learn", "scipy", "joblib", "gudhi", "pillow", "pydicom", "pydantic",
    "pydantic-settings", "pyyaml", "xgboost-cpu",
)  # fmt: skip
IMAGE_PACKAGES = ("torch", "monai")


def model_requirements(input_kind: str) -> list[str]:
    """Pinned requirements of the model's environment, from the installed distributions: conveyor itself first (its
    code is the model's code: the model ships its artifacts, not a copy of the package), then what it imports."""
    names = ("conveyor", *INFERENCE_PACKAGES) + (IMAGE_PACKAGES if input_kind != "features" else ())
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def register_model(
    settings: Settings,
    estimator: Any,
    spec: ModelSpec,
    details: dict[str, Any],
    region: SegmentedRegion | None = None,
    conformal: MondrianConformal | None = None,
) -> tuple[int, str]:
    """Log the pyfunc model in the active run, register it, and alias it (champion if it is the first).

    A model whose features are computed inside a segmented region (``spec.roi``) carries that ``region``'s U-Net; one
    calibrated for prediction sets carries its ``conformal`` calibration (``conformal.json``).

    ``details`` (candidate, dataset version, metrics, gate) go with the alias move into the audit log.

    Registering and auditing are one step: a version that an earlier run registered for the same dataset version,
    candidate and parameters but never audited (the run was killed in between) is completed (alias and audit
    entry) instead of a second version being registered.
    """
    import joblib
    import mlflow
    import mlflow.pyfunc

    from conveyor.tracking.integrity import record_artifacts
    from conveyor.tracking.pyfunc import ConveyorModel
    from conveyor.tracking.registry import CHALLENGER, CHAMPION, current_version, set_alias

    unfinished = _unaudited_version(settings, details)
    if unfinished is not None:
        alias = CHAMPION if current_version(settings, CHAMPION) is None else CHALLENGER
        details = {**details, "artifacts": record_artifacts(settings, unfinished)}
        set_alias(settings, alias, unfinished, "registered by an interrupted run; completed", details)
        return unfinished, alias
    with tempfile.TemporaryDirectory() as tmp:
        classifier = Path(tmp) / "classifier.joblib"
        joblib.dump(estimator, classifier)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(spec.to_json())
        artifacts = {"classifier": str(classifier), "spec": str(spec_path)}
        if spec.roi is not None:
            if region is None or region.key != spec.region_key:
                raise ConveyorError(f"the model's features lie inside region {spec.region_key}: its U-Net is needed")
            artifacts["roi_weights"] = str(Path(tmp) / "roi_unet.pt")
            Path(artifacts["roi_weights"]).write_bytes(region.weights)
        if conformal is not None:
            artifacts["conformal"] = str(Path(tmp) / "conformal.json")
            Path(artifacts["conformal"]).write_text(conformal.to_json())
        example = pd.DataFrame({"image": [_example_image(settings)]})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ConveyorModel(),
            artifacts=artifacts,
            signature=_signature(spec.classes),
            input_example=example,
            pip_requirements=model_requirements("image" if spec.roi is not None else spec.input_kind),
            registered_model_name=settings.model_name,
            await_registration_for=60,
        )
    registered = int(info.registered_model_version)
    details = {**details, "artifacts": record_artifacts(settings, registered)}  # the hashes loading will check
    alias = CHAMPION if current_version(settings, CHAMPION) is None else CHALLENGER
    reason = "first model to pass the gate" if alias == CHAMPION else "passed the gate against the champion"
    set_alias(settings, alias, registered, reason, details)
    return registered, alias


def _unaudited_version(settings: Settings, details: dict[str, Any]) -> int | None:
    """A registered version of the same dataset version, candidate and parameters with no alias move in the audit
    log: what a run killed between registering and auditing left."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from conveyor.tracking.registry import history

    client = MlflowClient()
    audited = {int(r.details.get("version", -1)) for r in history(settings, settings.model_name)}
    wanted = (str(details.get("dataset_version")), str(details.get("candidate")), params_key(details.get("params")))
    for found in client.search_model_versions(f"name = '{settings.model_name}'"):
        if int(found.version) in audited or not found.run_id:
            continue
        try:
            run = client.get_run(found.run_id)
        except MlflowException:
            continue
        made = (run.data.params.get("dataset_version"), run.data.tags.get("best_candidate"),
                run.data.tags.get(PARAMS_TAG))  # fmt: skip
        if made == wanted:
            return int(found.version)
    return None


PARAMS_TAG = "conveyor.best_params"


def params_key(params: Any) -> str:
    """The winner's parameters as the parent run's tag stores them."""
    return json.dumps(params or {}, sort_keys=True, default=repr)


def _signature(classes: list[str]) -> Any:
    """Input: ``image`` (bytes; base64 in JSON) or ``path``, each optional; output: label, confidence, probabilities."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    input_columns: list[Any] = [ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]
    output_columns: list[Any] = [ColSpec("string", "label"), ColSpec("double", "confidence")]
    output_columns += [ColSpec("double", f"proba_{name}") for name in classes]
    return ModelSignature(inputs=Schema(input_columns), outputs=Schema(output_columns))


def _example_image(settings: Settings) -> bytes:
    """The bytes of one stored image (the first by its path in the store), as the input example of the model's
    signature."""
    from sqlalchemy import select

    from conveyor.storage import Storage
    from conveyor.store.db import get_engine, session_scope
    from conveyor.store.models import Image

    with session_scope(get_engine(settings.resolved_db_url)) as session:
        first = session.scalar(select(Image.raw_path).order_by(Image.raw_path).limit(1))
    if first is None:
        raise ConveyorError("no stored image to use as the model's input example")
    return Storage.of(settings).read_bytes(first)
