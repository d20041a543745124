"""The ``conveyor monitor`` command (registered in :mod:`conveyor.cli`), in the CLI's style: parse, call, print."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from conveyor.errors import ConveyorError
from conveyor.monitoring.report import MonitorReport
from conveyor.terminal import JsonOption, emit_json, errors, out, print_subgroups

__all__ = ["monitor"]


def monitor(
    path: Annotated[
        Path | None,
        typer.Argument(help="New images: class folders (<label>/) are labelled and ingested; a flat folder is not."),
    ] = None,
    history: Annotated[bool, typer.Option("--history", help="Show the trend of past monitoring runs.")] = False,
    window: Annotated[
        float | None,
        typer.Option("--window", help="Monitor the prediction log of the last this many hours instead of PATH."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Runs shown by --history.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Monitor new data against the champion's training data: drift, model vs dummy baselines, OOD, alerts, retrain."""
    from conveyor.config import get_settings

    settings = get_settings()
    with errors(as_json):
        if history:
            from conveyor.monitoring.monitor import monitoring_history

            rows = monitoring_history(settings, limit)
            if as_json:
                emit_json({"history": [r.to_dict() for r in rows]})
            else:
                _print_history(rows)
            return
        if window is not None:
            from conveyor.monitoring.predictions import default_prediction_log, monitor_log

            until = datetime.now(UTC)
            summary = monitor_log(settings, default_prediction_log(settings), until - timedelta(hours=window), until)
        elif path is not None:
            from conveyor.monitoring.monitor import monitor_batch

            summary = monitor_batch(path, settings)
        else:
            raise ConveyorError("give a PATH of new images, --window HOURS of the prediction log, or --history")
    if as_json:
        emit_json(summary)
        return
    _print_summary(summary)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _print_summary(summary: dict[str, Any]) -> None:
    report = MonitorReport.model_validate(summary)
    out.print(
        f"monitored [bold]{report.n_current}[/] inputs ({report.n_labelled} labelled) from {report.source} "
        f"against model v{report.model_version} (trained on {report.reference_version}, "
        f"{report.n_reference} images)"
    )
    drifted = report.drifted_columns
    out.print(
        f"drift: {_fmt(report.drift_share, '{:.0%}')} of columns"
        + (f" ({', '.join(drifted[:10])}{' ...' if len(drifted) > 10 else ''})" if drifted else "")
    )
    if report.performance is not None:
        table = Table(title="performance on the labelled inputs")
        for column in ("", "F1", "precision", "recall", "accuracy"):
            table.add_column(column, justify="left" if not column else "right")
        for name in ("model", "dummy_by_reference", "dummy_by_current"):
            m = getattr(report.performance, name)
            table.add_row(name, *(_fmt(v) for v in (m.f1, m.precision, m.recall, m.accuracy)))
        out.print(table)
    if report.subgroups is not None:
        from conveyor.training.evaluate import METRIC_LABELS

        print_subgroups(report.subgroups, "the labelled inputs", METRIC_LABELS[report.subgroups["metric"]])
    out.print(f"out of distribution: {_fmt(report.ood_share, '{:.0%}')}")
    for alert in report.alerts:
        out.print(f"[bold red]alert[/] {alert.rule}: {alert.message}")
    out.print(f"retrain: [bold]{'yes' if report.retrain.retrain else 'no'}[/] ({report.retrain.reason})")
    out.print(f"report: {report.report}")


def _print_history(rows: list[Any]) -> None:
    table = Table(title="monitoring history (oldest first)")
    for column in ("id", "when", "source", "model", "n", "drift", "F1", "OOD", "alerts", "retrain"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.id),
            r.at.strftime("%Y-%m-%d %H:%M"),
            Path(r.source).name or r.source,
            f"v{r.model_version}",
            str(r.n_current),
            _fmt(r.drift_share, "{:.0%}"),
            _fmt(r.f1),
            _fmt(r.ood_share, "{:.0%}"),
            ", ".join(r.alerts) or "-",
            "yes" if r.retrain else "no",
        )
    out.print(table)
