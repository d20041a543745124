"""Tracking: MLflow runs, the pyfunc model, the registry and its audit log. Nothing here imports MLflow at import."""

__all__: list[str] = []
