"""What a registered version's importance record says: read back from the run that registered it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.config import Settings
from conveyor.errors import NotFoundError

__all__ = ["importance_of"]


def importance_of(settings: Settings, version: int, top: int = 20) -> dict[str, Any]:
    """The permutation importance training recorded for ``version``: its metric on the test split, the extractor
    groups and the ``top`` features by drop, and the plot, copied to ``reports/importance/v<version>.png``.

    Raises:
        NotFoundError: no such version, or none recorded (a pixel model, or one registered before conveyor did).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from conveyor.tracking.setup import configure_mlflow

    configure_mlflow(settings)
    client = mlflow.MlflowClient()
    try:
        run_id = client.get_model_version(settings.model_name, str(version)).run_id
    except MlflowException as exc:
        raise NotFoundError(f"model {settings.model_name!r} has no version {version}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="importance", dst_path=tmp))
        except (MlflowException, OSError) as exc:
            raise NotFoundError(
                f"model {settings.model_name!r} version {version} has no importance record (a pixel model, or one "
                "registered before conveyor recorded it)"
            ) from exc
        summary = json.loads((folder / "summary.json").read_text())
        groups = pd.read_csv(folder / "groups.csv")
        features = pd.read_csv(folder / "features.csv")
        plot = settings.reports_dir / "importance" / f"v{version}.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "importance.png", plot)
    return {
        "version": version,
        **summary,
        "groups": groups.to_dict(orient="records"),
        "features": features.head(top).to_dict(orient="records"),
        "features_computed": len(features),
        "plot": str(plot),
    }
