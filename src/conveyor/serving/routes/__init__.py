"""One router per resource: predictions, feedback, health and metrics, admin (reload, rollout), the upload page."""

from conveyor.serving.routes import admin, feedback, health, page, predict

__all__ = ["admin", "feedback", "health", "page", "predict"]
