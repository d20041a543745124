"""The model registry (MLflow) and its audit trail.

Aliases say which version does what: ``champion`` serves, ``challenger`` waits for its rollout. Every alias move,
and every refusal to register, is written to the audit log in the metadata DB with who, when, why and the metrics
behind it, so ``conveyor models`` can show the whole history and ``conveyor rollback`` knows where to go back to.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.errors import ConveyorError, NotFoundError
from conveyor.store.db import session_scope
from conveyor.store.models import AuditEntry
from conveyor.tracking.setup import configure_mlflow
from conveyor.workspace import open_workspace

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "AuditRecord",
    "ModelVersionInfo",
    "audit",
    "champion_history",
    "current_version",
    "history",
    "list_versions",
    "promote",
    "rollback",
    "set_alias",
]

CHAMPION = "champion"
CHALLENGER = "challenger"


def actor() -> str:
    """Who is acting: ``CONVEYOR_ACTOR`` if set (a service, a CI job), else the login name."""
    try:
        return os.environ.get("CONVEYOR_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class ModelVersionInfo:
    version: int
    aliases: list[str]
    run_id: str | None
    created: datetime
    description: str


def audit(
    settings: Settings,
    action: str,
    subject: str,
    reason: str,
    details: dict[str, Any],
    who: str | None = None,
    *,
    session: Session | None = None,
) -> None:
    """Append one entry to the audit log: in ``session``'s transaction when given (the entry is stored if and only if
    what it records is), else in its own."""
    entry = AuditEntry(actor=who or actor(), action=action, subject=subject, reason=reason, details=details)
    if session is not None:
        session.add(entry)
        return
    engine = open_workspace(settings)
    with session_scope(engine) as own:
        own.add(entry)


def history(settings: Settings, subject: str | None = None) -> list[AuditRecord]:
    """The audit log, oldest first (of one model name when ``subject`` is given)."""
    engine = open_workspace(settings)
    with session_scope(engine) as session:
        query = select(AuditEntry).order_by(AuditEntry.id)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        return [AuditRecord(r.at, r.actor, r.action, r.subject, r.reason, r.details) for r in session.scalars(query)]


def current_version(settings: Settings, alias: str) -> int | None:
    """The version holding ``alias``, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure_mlflow(settings)
    try:
        return int(MlflowClient().get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """Every registered version of the model, newest first, with its aliases."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure_mlflow(settings)
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    # search_model_versions leaves each version's aliases empty: the registered model has them.
    try:
        by_alias = dict(client.get_registered_model(settings.model_name).aliases or {})
    except MlflowException:
        by_alias = {}
    aliases: dict[int, list[str]] = {}
    for alias, number in by_alias.items():
        aliases.setdefault(int(number), []).append(alias)
    out = [
        ModelVersionInfo(
            int(v.version),
            sorted(set(v.aliases or []) | set(aliases.get(int(v.version), []))),
            v.run_id,
            datetime.fromtimestamp(v.creation_timestamp / 1000),
            v.description or "",
        )
        for v in versions
    ]
    return sorted(out, key=lambda v: v.version, reverse=True)


def set_alias(
    settings: Settings,
    alias: str,
    version: int,
    reason: str,
    details: dict[str, Any] | None = None,
    who: str | None = None,
) -> None:
    """Point ``alias`` at ``version`` and write it to the audit log.

    Raises:
        NotFoundError: the version does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure_mlflow(settings)
    client = MlflowClient()
    previous = current_version(settings, alias)
    try:
        client.set_registered_model_alias(settings.model_name, alias, str(version))
    except MlflowException as exc:
        raise NotFoundError(f"model {settings.model_name!r} has no version {version}: {exc.message}") from exc
    audit(
        settings,
        f"set_{alias}",
        settings.model_name,
        reason,
        {"version": version, "previous": previous, **(details or {})},
        who,
    )


def _clear_alias(settings: Settings, alias: str) -> None:
    from mlflow import MlflowClient

    if current_version(settings, alias) is not None:
        MlflowClient().delete_registered_model_alias(settings.model_name, alias)


def champion_history(settings: Settings) -> list[int]:
    """The stack of champions, oldest first: each promotion pushes a version, each rollback pops one.

    A rollback pops only the version it rolled back from: two rollbacks run at once both move the alias from the same
    champion to the same earlier one, and the second must not pop that earlier one off the stack as well."""
    stack: list[int] = []
    for record in history(settings, settings.model_name):
        if record.action != f"set_{CHAMPION}":
            continue
        rolled_back_from = record.details.get("rolled_back_from")
        if rolled_back_from is not None:
            if stack and stack[-1] == rolled_back_from:
                stack.pop()
        else:
            stack.append(int(record.details["version"]))
    return stack


def promote(
    settings: Settings, version: int | None = None, reason: str = "promoted by hand", who: str | None = None
) -> int:
    """Make ``version`` (default: the challenger) the champion; the challenger alias is cleared if it moved.

    Raises:
        ConveyorError: no version given and no challenger.
    """
    challenger = current_version(settings, CHALLENGER)
    target = version if version is not None else challenger
    if target is None:
        raise ConveyorError(f"model {settings.model_name!r} has no challenger to promote; name a version")
    set_alias(settings, CHAMPION, target, reason, who=who)
    if challenger == target:
        _clear_alias(settings, CHALLENGER)
    return target


def rollback(settings: Settings, reason: str = "rolled back by hand", who: str | None = None) -> int:
    """Give the champion alias back to the version that held it before the current one.

    Raises:
        ConveyorError: there is no earlier champion.
    """
    current = current_version(settings, CHAMPION)
    stack = champion_history(settings)
    if current is None or len(stack) < 2:
        raise ConveyorError(f"model {settings.model_name!r} has no earlier champion to roll back to")
    target = stack[-2]
    set_alias(settings, CHAMPION, target, reason, {"rolled_back_from": current}, who=who)
    return target
