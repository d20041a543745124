"""Monitoring: drift, performance against the dummy baselines, out-of-distribution inputs, alerts, retrain policy.

Entry points: :func:`monitor_batch` (a folder of new images), :func:`monitor_log` (a window of the prediction log),
:func:`monitoring_history`; settings in :class:`MonitoringSettings`. Submodules import their heavy dependencies
(Evidently, MLflow, matplotlib) only when called.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MonitoringSettings",
    "monitor_batch",
    "monitor_log",
    "monitoring_history",
]


def __getattr__(name: str) -> Any:
    if name == "MonitoringSettings":
        from conveyor.monitoring.settings import MonitoringSettings

        return MonitoringSettings
    if name in ("monitor_batch", "monitoring_history"):
        from conveyor.monitoring import monitor

        return getattr(monitor, name)
    if name == "monitor_log":
        from conveyor.monitoring.predictions import monitor_log

        return monitor_log
    raise AttributeError(name)
