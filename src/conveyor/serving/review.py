"""The review queue: answers the model was unsure of wait for a clinician, most uncertain first, and the label the
clinician picks goes back into the line.

An answer joins the queue when the model abstains (its prediction set is not one class) or its confidence is under
``serving.unsure_below``. The upload is kept in ``review/`` (once per image: a second unsure answer for the same
bytes is not queued twice while the first waits). A decision stores the label as feedback on the request (monitoring
of the served log joins it), files the image into the drop folder ``incoming/<label>/`` (the watcher ingests it with
the next batch, so it joins the next training like any newly labelled case), and is audited: who, when, which label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from conveyor.config import Settings
from conveyor.errors import ConveyorError, NotFoundError
from conveyor.store.db import session_scope
from conveyor.store.models import ReviewItem
from conveyor.workspace import atomic_write

__all__ = ["Decided", "ReviewDecisionError", "decide", "open_items", "queue_for_review", "review_reason"]

REVIEW_DIR = "review"

log = logging.getLogger(__name__)


class ReviewDecisionError(ConveyorError):
    """A decision the queue cannot take: the item was decided already (409), or the label is no class (422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def review_reason(abstain: bool, confidence: float, unsure_below: float) -> str | None:
    """Why an answer needs a clinician (``abstain``, ``low_confidence``), or None."""
    if abstain:
        return "abstain"
    if confidence < unsure_below:
        return "low_confidence"
    return None


def queue_for_review(
    settings: Settings,
    engine: Engine,
    *,
    data: bytes,
    request_id: str,
    sha256: str,
    format: str,
    model_version: int,
    label: str,
    confidence: float,
    probabilities: dict[str, float],
    prediction_set: list[str] | None,
    reason: str,
) -> bool:
    """Keep the upload and queue the answer; False when it is not queued (its image already waits, the queue holds
    ``serving.review_max_open`` items, or the disk or database failed: logged, never the request's failure)."""
    try:
        with session_scope(engine) as session:
            waiting = session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.status == "open"))
            if waiting is not None and waiting >= settings.serving.review_max_open:
                return False
            twin = select(ReviewItem.id).where(ReviewItem.input_sha256 == sha256, ReviewItem.status == "open")
            if session.scalar(twin) is not None:
                return False
        relative = Path(REVIEW_DIR) / sha256[:2] / f"{sha256}.{format}"
        target = settings.home / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)
        with session_scope(engine) as session:
            session.add(
                ReviewItem(
                    request_id=request_id, input_sha256=sha256, format=format, path=str(relative),
                    model_version=model_version, label=label, confidence=confidence, probabilities=probabilities,
                    prediction_set=prediction_set, reason=reason, uncertainty=1.0 - confidence,
                )
            )  # fmt: skip
    except IntegrityError:  # another process queued the same image meanwhile: it waits once
        return False
    except (OSError, SQLAlchemyError):
        log.exception("could not queue request %s for review", request_id)
        return False
    return True


@dataclass(frozen=True)
class QueuedCase:
    """One open item as the page and the API show it."""

    id: int
    request_id: str
    at: datetime
    label: str
    confidence: float
    probabilities: dict[str, float]
    prediction_set: list[str] | None
    reason: str
    model_version: int

    @property
    def classes(self) -> list[str]:
        return sorted(self.probabilities)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "request_id": self.request_id, "at": self.at.isoformat(), "label": self.label,
            "confidence": self.confidence, "probabilities": self.probabilities,
            "prediction_set": self.prediction_set, "reason": self.reason, "model_version": self.model_version,
        }  # fmt: skip


def open_items(engine: Engine, limit: int = 100) -> tuple[list[QueuedCase], int]:
    """The open items, most uncertain first (then oldest), and how many are open in all."""
    with session_scope(engine) as session:
        total = session.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.status == "open")) or 0
        rows = session.scalars(
            select(ReviewItem)
            .where(ReviewItem.status == "open")
            .order_by(ReviewItem.uncertainty.desc(), ReviewItem.id)
            .limit(limit)
        ).all()
        cases = [
            QueuedCase(
                r.id,
                r.request_id,
                r.at,
                r.label,
                r.confidence,
                dict(r.probabilities),
                r.prediction_set,
                r.reason,
                r.model_version,
            )
            for r in rows
        ]
    return cases, int(total)


def item_image(settings: Settings, engine: Engine, item_id: int) -> tuple[bytes, str]:
    """The kept upload of an item and its format.

    Raises:
        NotFoundError: no such item, or its file is gone.
    """
    with session_scope(engine) as session:
        row = session.get(ReviewItem, item_id)
        if row is None:
            raise NotFoundError(f"no review item {item_id}")
        path, format = settings.home / row.path, row.format
    try:
        return path.read_bytes(), format
    except OSError as exc:
        raise NotFoundError(f"review item {item_id}: its image is gone ({exc.strerror})") from exc


@dataclass(frozen=True)
class Decided:
    """What a decision did."""

    item_id: int
    request_id: str
    status: str
    label: str | None
    filed_as: str | None  # where the image went in the drop folder, relative to the workspace


def decide(settings: Settings, engine: Engine, item_id: int, who: str, label: str | None) -> Decided:
    """Take the decision on an open item: ``label`` (one of the model's classes) or None to dismiss it.

    Files a labelled image into ``incoming/<label>/review-<request id>.<format>`` (written atomically), marks the
    item decided and audits it. Feedback is the caller's (it needs the prediction log, which the server owns).

    Raises:
        NotFoundError: no such item.
        ReviewDecisionError: decided already (409), or the label is not a class of the model that answered (422).
    """
    from conveyor.tracking.registry import audit

    with session_scope(engine) as session:
        row = session.get(ReviewItem, item_id, with_for_update=True)
        if row is None:
            raise NotFoundError(f"no review item {item_id}")
        if row.status != "open":
            raise ReviewDecisionError(
                409, f"review item {item_id} was {row.status} already by {row.decided_by} at {row.decided_at}"
            )
        classes = sorted(row.probabilities)
        if label is not None and label not in classes:
            raise ReviewDecisionError(
                422, f"label {label!r} is not a class of model version {row.model_version}; expected one of {classes}"
            )
        status = "dismissed" if label is None else "labelled"
        # Claimed by a conditional UPDATE before anything else is done: PostgreSQL's row lock above already makes a
        # second decision wait and then see the first, but SQLite ignores FOR UPDATE; of two decisions taken at once
        # (two reviewers, two server processes) exactly one gets here, and it files the image.
        claimed: Any = session.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, ReviewItem.status == "open")
            .values(status=status, decided_label=label, decided_by=who, decided_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            raise ReviewDecisionError(409, f"review item {item_id} was decided meanwhile")
        filed_as = None
        if label is not None:  # a failure here rolls the claim back: the item stays open
            filed = Path("incoming") / label / f"review-{row.request_id}.{row.format}"
            if (settings.home / filed).resolve().parent.parent != settings.incoming_dir.resolve():
                raise ReviewDecisionError(422, f"label {label!r} cannot name a drop folder")
            (settings.home / filed).parent.mkdir(parents=True, exist_ok=True)
            try:
                image = (settings.home / row.path).read_bytes()
            except OSError as exc:
                raise NotFoundError(f"review item {item_id}: its image is gone ({exc.strerror})") from exc
            atomic_write(settings.home / filed, image)
            filed_as = str(filed)
        decided = Decided(row.id, row.request_id, status, label, filed_as)
        details = {"item": row.id, "request_id": row.request_id, "model_version": row.model_version,
                   "predicted": row.label, "label": label, "filed_as": filed_as}  # fmt: skip
        audit(settings, "review_" + status, f"request {row.request_id}", label or "dismissed", details, who,
              session=session)  # fmt: skip
    return decided
