"""Model integrity: a registered model's artifacts are hashed at registration and checked before each load.

A registered model is unpickled when it is loaded, so whoever can change the artifact store (the workspace's
``mlartifacts/``, or the tracking server's) could run code in the server. At registration conveyor records the
sha256 of every artifact file of the version (in the metadata DB and in the audit log); loading downloads the
version, hashes it again and refuses, with an error and an audit entry, a version whose files no longer match.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conveyor.config import Settings
from conveyor.errors import ConveyorError
from conveyor.store.db import session_scope
from conveyor.store.models import ModelArtifacts
from conveyor.workspace import open_workspace

__all__ = ["ModelIntegrityError", "artifact_manifest", "load_verified", "manifest_digest", "record_artifacts"]


class ModelIntegrityError(ConveyorError):
    """A registered model's artifacts differ from what was recorded when it was registered."""


def artifact_manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by its path relative to it."""
    manifest = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        manifest[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return manifest


def manifest_digest(manifest: dict[str, str]) -> str:
    """One sha256 for the whole manifest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _download(settings: Settings, version: int, into: Path) -> Path:
    import mlflow.artifacts

    from conveyor.tracking.setup import configure_mlflow

    configure_mlflow(settings)
    uri = f"models:/{settings.model_name}/{version}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))


def record_artifacts(settings: Settings, version: int) -> dict[str, Any]:
    """Hash the registered version's artifacts as the store holds them and record them; returns what was recorded
    (``digest`` and ``files``), for the audit entry of the registration."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = artifact_manifest(_download(settings, version, Path(tmp)))
    digest = manifest_digest(manifest)
    engine = open_workspace(settings)
    with session_scope(engine) as session:
        row = session.scalars(
            select(ModelArtifacts).where(ModelArtifacts.name == settings.model_name, ModelArtifacts.version == version)
        ).first()
        if row is None:
            session.add(ModelArtifacts(name=settings.model_name, version=version, digest=digest, files=manifest))
        else:
            row.digest, row.files = digest, manifest
    return {"digest": digest, "files": len(manifest)}


def _recorded(settings: Settings, version: int) -> ModelArtifacts | None:
    engine = open_workspace(settings)
    with session_scope(engine) as session:
        return session.scalars(
            select(ModelArtifacts).where(ModelArtifacts.name == settings.model_name, ModelArtifacts.version == version)
        ).first()


def load_verified(settings: Settings, version: int) -> Any:
    """The registered version as an MLflow pyfunc model, loaded only if its artifacts match their record.

    Raises:
        ModelIntegrityError: a file was changed, added or removed since registration, or no record exists (a
            version registered outside conveyor, or before it recorded hashes: ``conveyor models --rehash VERSION``
            records the current files after you have checked them).
    """
    import mlflow.pyfunc

    from conveyor.tracking.registry import audit

    recorded = _recorded(settings, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = _download(settings, version, Path(tmp))
        manifest = artifact_manifest(local)
        problem = None
        if recorded is None:
            problem = "no hash of its artifacts was recorded at registration"
        elif manifest != recorded.files:
            changed = sorted(p for p in set(manifest) | set(recorded.files) if manifest.get(p) != recorded.files.get(p))
            problem = f"{len(changed)} artifact file(s) differ from the registration: {', '.join(changed[:5])}"
        if problem is not None:
            message = f"model {settings.model_name!r} version {version}: {problem}; refusing to load it"
            audit(settings, "integrity_failed", settings.model_name, message, {"version": version})
            raise ModelIntegrityError(message)
        saved_path = list(sys.path)
        try:
            return mlflow.pyfunc.load_model(str(local))
        finally:
            # A version registered before models stopped shipping a copy of conveyor (``code_paths``) puts that copy
            # on sys.path when loaded; the installed package must stay the one imported.
            sys.path[:] = saved_path
