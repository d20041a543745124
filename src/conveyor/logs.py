"""Where other libraries' chatter goes: the workspace log (``logs/conveyor.log``), not the terminal.

MLflow's warnings and notices ("Registered model ... already exists", the CloudPickle warning), Python warnings from
scikit-learn or Evidently, and every library logger that propagates end up in the log file; the terminal keeps
conveyor's own output, its progress bars, and errors. Set up by the command-line entry point only (a library
must not reconfigure its host's logging); :func:`conveyor.tracking.setup.configure_mlflow` calls
:func:`quiet_mlflow` once MLflow is imported, which does nothing unless the entry point asked for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["log_file", "quiet_mlflow", "route_to_log"]

_handler: logging.Handler | None = None


def log_file() -> Path | None:
    """The file third-party output goes to, when the entry point routed it."""
    return Path(_handler.baseFilename) if isinstance(_handler, logging.FileHandler) else None


def route_to_log(path: Path) -> None:
    """Send Python warnings and library log records (INFO and up) to ``path`` instead of the terminal."""
    global _handler
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> this file
    # Processes this one starts (the search's joblib workers) write their warnings to the inherited terminal:
    # they have no log of their own to send them to, so they are not shown (the parent's are kept in the file).
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _handler = handler
    quiet_mlflow()


def quiet_mlflow() -> None:
    """Point MLflow's own loggers (which do not propagate) and its ``eprint`` notices at the log file."""
    import sys

    if _handler is None or "mlflow" not in sys.modules:
        return
    from mlflow.utils import logging_utils

    handler = _handler
    stream = logging_utils.MLFLOW_LOGGING_STREAM  # behind eprint(): re-enabled by MLflow itself, so redirected

    def write(text: str) -> None:
        if text.strip():
            handler.emit(logging.LogRecord("mlflow", logging.INFO, "", 0, text.strip(), None, None))

    stream.write = write  # type: ignore[method-assign]
    stream.flush = lambda: None  # type: ignore[method-assign]
    for name in ("mlflow", "alembic", "huey", "sqlalchemy.engine"):
        logging.getLogger(name).handlers = [_handler]
