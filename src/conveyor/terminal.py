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

from conveyor.errors import ConveyorError

__all__ = ["JsonOption", "emit_json", "err", "errors", "out"]

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
