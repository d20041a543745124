"""What every command shares on the terminal: the two consoles, ``--json``, and how a ConveyorError ends a command.

A command prints tables to stdout, or with ``--json`` only one JSON object; progress and errors go to stderr. A
ConveyorError (bad input, nothing to do, a refusal) ends it with the message, the JSON ``{"error", "type"}`` under
``--json``, and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conveyor.errors import ConveyorError

__all__ = ["JsonOption", "emit_json", "err", "errors", "out", "print_subgroups"]

out = Console(width=None if sys.stdout.isatty() else 140)  # pipes and CI logs get whole tables, not 80 columns
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object (the summary) on stdout.")]


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str, ensure_ascii=False) + "\n")


@contextmanager
def errors(as_json: bool) -> Iterator[None]:
    """Turn a ConveyorError into a clear message (and a JSON object with --json) and exit status 1."""
    try:
        yield
    except ConveyorError as exc:
        if as_json:
            emit_json({"error": str(exc), "type": type(exc).__name__})
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def print_subgroups(report: dict[str, Any], where: str, label: str) -> None:
    """A subgroup report (:meth:`conveyor.training.subgroups.SubgroupReport.to_dict`) as a table: each group's
    metric (``label``) and accuracy with their 95% intervals beside the whole; small groups say so, groups that fall
    behind the whole are marked. Nothing when there is no group."""
    if not report["groups"]:
        return
    whole = "-" if report["whole"] is None else f"{report['whole']:.3f}"
    table = Table(title=f"subgroups of {where} (whole: {label} {whole}, n {report['n']})")
    for column in ("attribute", "value", "n", f"{label} [95% interval]", "accuracy [95% interval]", ""):
        table.add_column(column, justify="right" if column == "n" else "left", no_wrap=column != "value")

    def shown(value: float | None, low: float | None, high: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" + ("" if low is None or high is None else f" [{low:.2f}, {high:.2f}]")

    for g in report["groups"]:
        if g["metric"] is None and g["accuracy"] is None:  # too few cases: the note says so
            table.add_row(g["attribute"], g["value"], str(g["n"]), f"[dim]{g['note']}[/]", "", "")
            continue
        flag = "[red]behind the whole[/]" if g["behind"] else (g["note"] or "")
        table.add_row(
            g["attribute"], g["value"], str(g["n"]), shown(g["metric"], g["metric_low"], g["metric_high"]),
            shown(g["accuracy"], g["accuracy_low"], g["accuracy_high"]), flag,
        )  # fmt: skip
    out.print(table)
