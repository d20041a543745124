"""Serving: the FastAPI app (predictions, feedback, the upload page, metrics), the rollout router and policy.

Names load lazily: importing :mod:`conveyor.serving.settings` (as the settings do) must not pull in FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RolloutPolicySettings", "ServingSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from conveyor.serving.app import create_app

        return create_app
    if name in ("RolloutPolicySettings", "ServingSettings"):
        from conveyor.serving import settings

        return getattr(settings, name)
    raise AttributeError(name)
