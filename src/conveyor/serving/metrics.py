"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics", "MetricsMiddleware"]


class Metrics:
    """Requests, errors, latency, and predictions per model version, arm and class."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conveyor_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "conveyor_http_errors", "Requests answered 4xx or 5xx, by reason.", ["route", "status", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "conveyor_http_request_duration_seconds", "Time to answer a request.", ["route"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )  # fmt: skip
        self.predictions = Counter(
            "conveyor_predictions", "Predictions made, by model version, arm and predicted class.",
            ["model", "version", "arm", "label"], registry=self.registry,
        )  # fmt: skip

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)

    def record_prediction(self, outcome: Any) -> None:
        self.predictions.labels(outcome.model.name, str(outcome.model.version), outcome.arm, outcome.label).inc()


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by route template (not raw path, to bound cardinality)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            if status["code"] >= 400:
                reason = scope.get("state", {}).get("error_reason", "http")
                self.metrics.errors.labels(path, str(status["code"]), reason).inc()
