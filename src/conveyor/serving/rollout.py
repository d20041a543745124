"""Safe rollout of a challenger: the traffic router, the policy that judges a stage, and the actions on a rollout.

Modes:

* ``shadow``: the champion answers every request; the challenger scores it too, silently (arm ``shadow``).
* ``canary``: a share of inputs is answered by the challenger, in stages (default 1% -> 50% -> 100%).
* ``ab``: a fixed share (default 50%) for an experiment, one stage.

Routing is sticky per input: an input goes to the challenger when the first 8 hex digits of its sha256, read as a
fraction of 2**32, fall under the share. The same image always meets the same model within a stage, and since the
shares only grow, an input sent to the challenger at 1% is still sent there at 50%.

The policy (:func:`judge`) looks at the predictions of the current stage that have a clinician's label, and compares
the arms on ``training.metric``, the metric that chose and gated the model:

1. each arm needs ``min_feedback`` labelled predictions, else *wait*;
2. *roll back* if the challenger's metric is significantly lower than the champion's (one-sided, p < ``alpha``). For
   accuracy that is Fisher's exact test on the 2x2 table (arm x correct), ``alternative="less"``: exact, so valid for
   the small counts of an early canary stage where a z-test's normal approximation is not. For the other metrics
   (balanced accuracy, F1, ROC-AUC are not proportions) it is a permutation test: the arms' labelled cases are pooled
   and dealt out again at random 2,000 times (seeded), and p is the share of deals whose challenger-minus-champion
   difference is as low as the one observed (plus one, over 2,001). Balanced accuracy weighs a miss by its class's
   size, so with few labels one miss in a class the challenger saw a few times can be significant where accuracy's
   Fisher test would not be. A failed prediction with a label counts as wrong;
3. *roll back* if the challenger's error rate (predictions that failed) is significantly higher, by Fisher's test;
4. otherwise *advance*: to the next canary stage, or, from the last stage (and from shadow and A/B), promote the
   challenger, which moves the registry alias.

Not significantly worse is what "not worse" means here; with ``min_feedback`` labels per arm the test has the power
to see a large drop, not a small one; raise ``min_feedback`` for more. Every decision goes to the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, case, func, or_, select, update
from sqlalchemy.orm import Session

from conveyor.config import Settings
from conveyor.errors import ConveyorError
from conveyor.serving.settings import ServingSettings
from conveyor.store.db import session_scope
from conveyor.store.models import utcnow

__all__ = [
    "MODES",
    "ArmStats",
    "Case",
    "Decision",
    "RolloutStatus",
    "active_rollout",
    "advance",
    "bucket",
    "choose_arm",
    "feedback_sources",
    "judge",
    "policy_decision",
    "promote",
    "recover_interrupted",
    "rollback",
    "rollout_mark",
    "stage_stats",
    "start",
]

MODES: tuple[str, ...] = ("shadow", "canary", "ab")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout as the API and the CLI show it."""

    id: int
    mode: str
    status: str
    stage: int
    share: float
    champion_version: int
    challenger_version: int
    started_at: datetime
    stage_started_at: datetime
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out["stage_started_at"] = self.stage_started_at.isoformat()
        return out


@dataclass(frozen=True)
class Case:
    """One labelled prediction: the clinician's label, the model's answer (None: it failed) and its probabilities."""

    truth: str
    predicted: str | None
    probabilities: dict[str, float] | None = None


@dataclass(frozen=True)
class ArmStats:
    """One arm's predictions in a stage: counts, and the labelled ones as cases (what a metric is computed on)."""

    predictions: int
    errors: int
    labelled: int
    correct: int
    cases: tuple[Case, ...] = field(default=(), repr=False)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "errors": self.errors, "labelled": self.labelled,
                "correct": self.correct, "accuracy": self.accuracy}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    action: Literal["advance", "rollback", "wait"]
    reason: str
    champion: ArmStats
    challenger: ArmStats
    metric: str = "accuracy"  # training.metric, what the arms were compared on
    p_metric: float | None = None  # one-sided p that the challenger's metric is lower
    p_errors: float | None = None
    sources: dict[str, int] = field(default_factory=dict)  # feedback identity -> labels it gave in the stage
    scores: tuple[float | None, float | None] = (None, None)  # (champion, challenger) value of the metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "metric": self.metric,
            "sources": dict(self.sources),
            "champion": {**self.champion.to_dict(), "score": self.scores[0]},
            "challenger": {**self.challenger.to_dict(), "score": self.scores[1]},
            "p_metric": self.p_metric,
            "p_errors": self.p_errors,
        }


# ------------------------------------------------------------------------------------------------------ routing


def bucket(sha256: str) -> float:
    """Where an input falls in [0, 1): its first 32 bits as a fraction."""
    return int(sha256[:8], 16) / 2**32


def choose_arm(state: RolloutStatus | None, sha256: str) -> Literal["champion", "challenger"]:
    """Which model answers this input (the shadow, if any, scores in addition and is decided by the mode)."""
    if state is None or state.status != "active" or state.mode == "shadow":
        return "champion"
    return "challenger" if bucket(sha256) < state.share else "champion"


# ------------------------------------------------------------------------------------------------------- state


def _status(row: Any) -> RolloutStatus:
    return RolloutStatus(
        id=row.id,
        mode=row.mode,
        status=row.status,
        stage=row.stage,
        share=row.share,
        champion_version=row.champion_version,
        challenger_version=row.challenger_version,
        started_at=row.started_at,
        stage_started_at=row.stage_started_at,
        decisions=list((row.decisions or {}).get("items", [])),
    )


def active_rollout(engine: Engine) -> RolloutStatus | None:
    """The rollout in progress, or None."""
    from conveyor.store.models import Rollout

    with session_scope(engine) as session:
        row = session.scalars(
            select(Rollout).where(Rollout.status == "active").order_by(Rollout.id.desc()).limit(1)
        ).first()
        return None if row is None else _status(row)


def latest_rollout(engine: Engine) -> RolloutStatus | None:
    """The newest rollout, whatever its status, or None."""
    from conveyor.store.models import Rollout

    with session_scope(engine) as session:
        row = session.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(1)).first()
        return None if row is None else _status(row)


def rollout_mark(engine: Engine) -> tuple[Any, ...] | None:
    """What changes whenever any rollout moves (id, status, stage, end of the newest): one small indexed query, so a
    server process can check it every second and reload only when another process decided something."""
    from conveyor.store.models import Rollout

    query = select(Rollout.id, Rollout.status, Rollout.stage, Rollout.ended_at).order_by(Rollout.id.desc()).limit(1)
    with session_scope(engine) as session:
        row = session.execute(query).first()
        return None if row is None else tuple(row)


def _share(mode: str, stage: int, cfg: ServingSettings) -> float:
    if mode == "shadow":
        return 0.0
    if mode == "ab":
        return cfg.rollout.ab_share
    return cfg.rollout.canary_stages[stage]


def _append(
    settings: Settings, session: Session, row: Any, action: str, reason: str, details: dict[str, Any], who: str
) -> None:
    """Append a decision to the rollout ``row`` and to the audit log, in ``session``'s transaction: the caller holds
    the row (it updated or inserted it first), so two processes never append over each other."""
    from conveyor.tracking.registry import audit

    items = list((row.decisions or {}).get("items", []))
    items.append({"at": utcnow().isoformat(), "action": action, "reason": reason, "who": who, **details})
    row.decisions = {"items": items}
    audit(settings, f"rollout_{action}", settings.model_name, reason, {"rollout_id": row.id, **details}, who,
          session=session)  # fmt: skip


def start(settings: Settings, engine: Engine, mode: str, who: str) -> RolloutStatus:
    """Begin a rollout of the current challenger.

    Of two starts at once (two server processes), one wins: the rollout row and its ``start`` decision are one
    transaction, and the unique ``active_guard`` refuses a second active rollout.

    Raises:
        ConveyorError: an unknown mode, a rollout already in progress, or no champion or challenger.
    """
    from sqlalchemy.exc import IntegrityError

    from conveyor.store.models import Rollout
    from conveyor.tracking.registry import CHALLENGER, CHAMPION, current_version

    if mode not in MODES:
        raise ConveyorError(f"rollout mode must be one of {', '.join(MODES)}, got {mode!r}")
    recover_interrupted(settings, engine, who)
    _refuse_if_active(engine)
    champion, challenger = current_version(settings, CHAMPION), current_version(settings, CHALLENGER)
    if champion is None or challenger is None:
        raise ConveyorError(
            f"model {settings.model_name!r} needs a champion and a challenger to roll out "
            f"(champion: {champion}, challenger: {challenger})"
        )
    share = _share(mode, 0, settings.serving)
    try:
        with session_scope(engine) as session:
            row = Rollout(
                mode=mode,
                status="active",
                stage=0,
                share=share,
                champion_version=champion,
                challenger_version=challenger,
                decisions={"items": []},
                active_guard=1,
            )
            session.add(row)
            session.flush()  # a second active rollout fails here, on the unique active_guard
            _append(
                settings, session, row, "start", f"{mode} rollout of version {challenger} against {champion}",
                {"mode": mode, "share": share, "champion": champion, "challenger": challenger}, who,
            )  # fmt: skip
            return _status(row)
    except IntegrityError as exc:  # another process started one meanwhile
        _refuse_if_active(engine)
        raise ConveyorError("another rollout was started meanwhile; nothing done") from exc


STALE_CLAIM_S = 600.0
"""A promotion claimed longer ago than this and not finished died during its alias move (the move takes seconds)."""


def recover_interrupted(settings: Settings, engine: Engine, who: str) -> list[RolloutStatus]:
    """Finish what a promotion killed between its claim and its end left: the rollout says ``promoted`` with no end.

    If the champion alias reached the challenger, the promotion happened: the rollout ends, its decision recorded.
    If not, nothing was promoted: the rollout is active again, as before the claim (unless another rollout was
    started since: then it stays ended without a promotion). Either way the audit log says so. Called before every
    rollout decision, so the next command resumes from a consistent state; claims younger than
    :data:`STALE_CLAIM_S` are left alone (their process may still be moving the alias).
    """
    from conveyor.store.models import Rollout
    from conveyor.tracking.registry import CHAMPION, current_version

    cutoff = utcnow() - timedelta(seconds=STALE_CLAIM_S)
    with session_scope(engine) as session:
        stale = [
            _status(row)
            for row in session.scalars(
                select(Rollout).where(
                    Rollout.status == "promoted",
                    Rollout.ended_at.is_(None),
                    or_(Rollout.claimed_at.is_(None), Rollout.claimed_at < cutoff),
                )
            )
        ]
    recovered = []
    for state in stale:
        if current_version(settings, CHAMPION) == state.challenger_version:
            record = ("promote", "finished after an interrupted promotion: the champion alias had moved",
                      {"version": state.challenger_version, "recovered": True}, who)  # fmt: skip
            changed = _end_claim(engine, state, record, settings)
        else:
            share = _share(state.mode, state.stage, settings.serving)  # the claim zeroed it
            reason = "a promotion died before the champion alias moved; the rollout is active again"
            record = ("recover", reason, {"version": state.challenger_version, "recovered": True}, who)
            changed = _reopen(engine, state, share, (settings, record))
            if changed is None:  # another rollout is active: this one ends, unpromoted
                reason = "a promotion died before the champion alias moved; another rollout had started, so it ended"
                record = ("recover", reason, {"version": state.challenger_version, "recovered": True}, who)
                changed = _end_claim(engine, state, record, settings, status="rolled_back")
        if changed is not None:  # None: another process recovered it first
            recovered.append(changed)
    return recovered


def _refuse_if_active(engine: Engine) -> None:
    current = active_rollout(engine)
    if current is not None:
        raise ConveyorError(f"rollout {current.id} ({current.mode}) is already in progress; promote or roll it back")


def _require_active(engine: Engine) -> RolloutStatus:
    state = active_rollout(engine)
    if state is None:
        raise ConveyorError("no rollout is in progress; start one with 'conveyor rollout start'")
    return state


# ------------------------------------------------------------------------------------------------------ policy


def stage_stats(engine: Engine, state: RolloutStatus, *, probabilities: bool = False) -> tuple[ArmStats, ArmStats]:
    """(champion, challenger) predictions of the rollout's current stage (at a 100% stage, the champion's over the
    whole rollout): counted in the database, and only the labelled ones read back as cases (with their
    probabilities when asked: ROC-AUC needs them, the label metrics do not)."""
    from conveyor.store.models import Feedback, Prediction

    failed = Prediction.error.is_not(None)
    counts = select(Prediction.arm, func.count(Prediction.id), func.sum(case((failed, 1), else_=0))).group_by(
        Prediction.arm
    )
    columns: list[Any] = [Prediction.arm, failed, Prediction.label, Feedback.label]
    if probabilities:
        columns.append(Prediction.probabilities)
    labelled = select(*columns).join(Feedback, Feedback.request_id == Prediction.request_id)

    def arms(where: Any) -> dict[str, ArmStats]:
        scope = (Prediction.rollout_id == state.id) & where
        cases: dict[str, list[Case]] = {}
        with session_scope(engine) as session:
            totals = {arm: (int(n), int(errors or 0)) for arm, n, errors in session.execute(counts.where(scope))}
            for arm, error, predicted, truth, *proba in session.execute(labelled.where(scope)):
                cases.setdefault(arm, []).append(Case(truth, None if error else predicted, proba[0] if proba else None))
        out = {}
        for arm, (n, errors) in totals.items():
            found = tuple(cases.get(arm, ()))
            correct = sum(1 for c in found if c.predicted == c.truth)
            out[arm] = ArmStats(n, errors, len(found), correct, found)
        return out

    empty = ArmStats(0, 0, 0, 0)
    challenger_arm = "shadow" if state.mode == "shadow" else "challenger"
    stage = arms(Prediction.stage == state.stage)
    # At a 100% stage the champion answers nothing; it is judged on what it answered during the whole rollout.
    champion_rows = arms(Prediction.stage <= state.stage) if state.share >= 1.0 else stage
    return champion_rows.get("champion", empty), stage.get(challenger_arm, empty)


def feedback_sources(engine: Engine, state: RolloutStatus) -> dict[str, int]:
    """Who labelled the predictions the stage is judged on (as :func:`stage_stats` counts them), and how many each."""
    from conveyor.store.models import Feedback, Prediction

    stage = Prediction.stage <= state.stage if state.share >= 1.0 else Prediction.stage == state.stage
    query = (
        select(Feedback.who, func.count(Feedback.id))
        .join(Prediction, Feedback.request_id == Prediction.request_id)
        .where(Prediction.rollout_id == state.id, stage)
        .group_by(Feedback.who)
    )
    with session_scope(engine) as session:
        return {str(who): int(n) for who, n in session.execute(query)}


def _p_less(good_a: int, n_a: int, good_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value that A's rate of 'good' is lower than B's."""
    from scipy.stats import fisher_exact

    if n_a == 0 or n_b == 0:
        return 1.0
    table = [[good_a, n_a - good_a], [good_b, n_b - good_b]]
    return float(fisher_exact(table, alternative="less").pvalue)


PERMUTATIONS = 2000
_DEAL_CELLS = 1_000_000  # (case x deal) cells per step of the permutation test


def _metric_test(
    metric: str, champion: tuple[Case, ...], challenger: tuple[Case, ...], positive: str | None
) -> tuple[float | None, float | None, float]:
    """(champion's value, challenger's value, one-sided permutation p that the challenger's is lower) of ``metric``
    on the arms' cases. ROC-AUC leaves out the failed predictions (they have no probabilities)."""
    import numpy as np

    from conveyor.training.evaluate import Scorer, positive_class

    if metric == "roc_auc":
        champion = tuple(c for c in champion if c.probabilities)
        challenger = tuple(c for c in challenger if c.probabilities)
    cases = champion + challenger
    names: set[str] = {c.truth for c in cases} | {c.predicted for c in cases if c.predicted is not None}
    for labelled_case in cases:
        names |= set(labelled_case.probabilities or {})
    classes = sorted(names)
    if len(classes) < 2 or not champion or not challenger:
        return None, None, 1.0
    code = {name: i for i, name in enumerate(classes)}
    t = np.array([code[c.truth] for c in cases])
    p = np.array([len(classes) if c.predicted is None else code[c.predicted] for c in cases])
    scores = np.array([[(c.probabilities or {}).get(name, 0.0) for name in classes] for c in cases])
    pos = positive_class(classes, positive if positive in code else None)
    scorer = Scorer(metric, len(classes), None if pos is None else code[pos])
    n, n_champion = len(cases), len(champion)
    observed = np.zeros((n, 1), dtype=np.int64)
    observed[n_champion:] = 1
    a, b = scorer.values(t, p, scores, 1 - observed)[0], scorer.values(t, p, scores, observed)[0]
    if np.isnan(a) or np.isnan(b):
        return None, None, 1.0
    # Canary and A/B routing hash the image, so which arm a case met is random: under "the arm makes no difference"
    # every deal of the pooled cases is as likely as the observed one (class mixes included; a stratified deal could
    # not compare arms whose labelled cases share no class, and would pass a challenger that is always wrong).
    rng = np.random.default_rng(0)
    as_low = 0
    chunk = max(1, _DEAL_CELLS // n)  # deals per step: memory stays ~tens of MB however long the rollout ran
    for start in range(0, PERMUTATIONS, chunk):
        count = min(chunk, PERMUTATIONS - start)
        dealt = np.argsort(rng.random((count, n)), axis=1) >= n_champion  # a deal: who is "challenger"
        weights = dealt.T.astype(np.int64)
        diffs = scorer.values(t, p, scores, weights) - scorer.values(t, p, scores, 1 - weights)
        as_low += int(np.sum(np.nan_to_num(diffs, nan=np.inf) <= (b - a) + 1e-12))
    return float(a), float(b), (1 + as_low) / (PERMUTATIONS + 1)


def judge(
    champion: ArmStats, challenger: ArmStats, cfg: ServingSettings, *, metric: str, positive: str | None = None
) -> Decision:
    """The policy's decision on one stage (see the module docstring); ``metric`` is ``training.metric``,
    ``positive`` the configured positive class (``training.positive_class``) of a binary F1."""
    from conveyor.training.evaluate import METRIC_LABELS

    need = cfg.rollout.min_feedback
    if champion.labelled < need or challenger.labelled < need:
        return Decision(
            "wait",
            f"needs {need} labelled predictions per arm; champion has {champion.labelled}, "
            f"challenger {challenger.labelled}",
            champion,
            challenger,
            metric,
        )
    if metric == "accuracy":
        scores: tuple[float | None, float | None] = (champion.accuracy, challenger.accuracy)
        p_metric = _p_less(challenger.correct, challenger.labelled, champion.correct, champion.labelled)
        test = "one-sided Fisher exact"
    else:
        low, high, p_metric = _metric_test(metric, champion.cases, challenger.cases, positive)
        scores = (low, high)
        test = f"one-sided permutation test, {PERMUTATIONS} deals"
    # Errors: compare the share of predictions that did *not* fail.
    p_err = _p_less(
        challenger.predictions - challenger.errors, challenger.predictions,
        champion.predictions - champion.errors, champion.predictions,
    )  # fmt: skip
    alpha = cfg.rollout.alpha
    label = METRIC_LABELS[metric]
    shown = tuple("-" if v is None else f"{v:.3f}" for v in scores)
    if p_metric < alpha:
        reason = (
            f"challenger {label} {shown[1]} is significantly below the champion's {shown[0]} "
            f"({test} p={p_metric:.4f} < {alpha})"
        )
        return Decision("rollback", reason, champion, challenger, metric, p_metric, p_err, scores=scores)
    if p_err < alpha:
        reason = (
            f"challenger failed on {challenger.errors}/{challenger.predictions} requests against the champion's "
            f"{champion.errors}/{champion.predictions} (one-sided Fisher exact p={p_err:.4f} < {alpha})"
        )
        return Decision("rollback", reason, champion, challenger, metric, p_metric, p_err, scores=scores)
    reason = (
        f"challenger {label} {shown[1]} vs champion {shown[0]} on "
        f"{challenger.labelled}/{champion.labelled} labels: not significantly worse (p={p_metric:.4f}), "
        f"errors {challenger.errors} vs {champion.errors}"
    )
    return Decision("advance", reason, champion, challenger, metric, p_metric, p_err, scores=scores)


def policy_decision(settings: Settings, engine: Engine, state: RolloutStatus) -> Decision:
    """What the policy says of the rollout's current stage now, on ``training.metric``, with who labelled it."""
    training = settings.training
    arms = stage_stats(engine, state, probabilities=training.metric == "roc_auc")
    judged = judge(*arms, settings.serving, metric=training.metric, positive=training.positive_class)
    return replace(judged, sources=feedback_sources(engine, state))


# ----------------------------------------------------------------------------------------------------- actions


def advance(settings: Settings, engine: Engine, who: str, *, force: bool = False) -> tuple[Decision, RolloutStatus]:
    """Ask the policy about the current stage and act on its answer.

    ``advance`` moves to the next canary stage or promotes from the last; ``rollback`` ends the rollout; ``wait``
    changes nothing. ``force`` advances whatever the policy says (recorded as such).

    Raises:
        ConveyorError: no rollout in progress.
    """

    recover_interrupted(settings, engine, who)
    state = _require_active(engine)
    cfg = settings.serving
    decision = policy_decision(settings, engine, state)
    sources = decision.sources
    need = cfg.rollout.min_feedback_sources
    if decision.action != "wait" and len(sources) < need:
        decision = replace(
            decision,
            action="wait",
            reason=f"needs labels from {need} feedback identities; this stage's come from {len(sources)} "
            f"({', '.join(sorted(sources)) or 'none'}); the policy would say {decision.action}: {decision.reason}",
        )
    if force and decision.action != "advance":
        decision = replace(
            decision, action="advance", reason=f"forced by {who} (policy said {decision.action}: {decision.reason})"
        )
    if decision.action == "wait":
        return decision, state
    if decision.action == "rollback":
        ended = rollback(settings, engine, who, decision.reason, {"decision": decision.to_dict()})
        assert ended is not None
        return decision, ended
    last = state.mode != "canary" or state.stage + 1 >= len(cfg.rollout.canary_stages)
    if last:
        return decision, _promote(settings, engine, state, who, decision.reason, {"decision": decision.to_dict()})
    stage = state.stage + 1
    share = _share(state.mode, stage, cfg)
    new = _claim(
        settings, engine, state, ("advance", decision.reason, {"stage": stage, "share": share,
                                                                "decision": decision.to_dict()}, who),
        stage=stage, share=share, stage_started_at=utcnow(),
    )  # fmt: skip
    return decision, new


def _claim(
    settings: Settings, engine: Engine, state: RolloutStatus, record: tuple[str, str, dict[str, Any], str] | None,
    **changes: Any,
) -> RolloutStatus:  # fmt: skip
    """Apply ``changes`` to the rollout only if it is still active at the stage ``state`` saw, and append ``record``
    (action, reason, details, who) to its decisions and the audit log in the same transaction: of two decisions
    taken at once (two feedback requests, two server processes), one wins and the other raises, and a decision is
    never stored without its move, nor a move without its decision. The conditional ``UPDATE`` comes first, so it
    holds the row (PostgreSQL's row lock; SQLite's write lock) for the rest of the transaction.

    Raises:
        ConveyorError: the rollout was decided meanwhile.
    """
    from conveyor.store.models import Rollout

    with session_scope(engine) as session:
        result: Any = session.execute(
            update(Rollout)
            .where(Rollout.id == state.id, Rollout.status == "active", Rollout.stage == state.stage)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise ConveyorError(f"rollout {state.id} was decided meanwhile (it left stage {state.stage}); nothing done")
        row = session.get(Rollout, state.id, populate_existing=True)
        assert row is not None
        if record is not None:
            _append(settings, session, row, *record)
        return _status(row)


def _reopen(
    engine: Engine, state: RolloutStatus, share: float, audit: tuple[Settings, tuple[Any, ...]] | None = None
) -> RolloutStatus | None:
    """Undo a claimed promotion whose alias move failed or died: the rollout is active again at ``share``, with
    ``audit``'s decision appended if given. None when it was no longer claimed, or another rollout is active (then
    this one stays claimed: :func:`recover_interrupted` ends it)."""
    from sqlalchemy.exc import IntegrityError

    from conveyor.store.models import Rollout

    try:
        with session_scope(engine) as session:
            result: Any = session.execute(
                _claimed(state.id).values(status="active", share=share, active_guard=1, claimed_at=None)
            )
            if result.rowcount != 1:
                return None
            row = session.get(Rollout, state.id, populate_existing=True)
            assert row is not None
            if audit is not None:
                _append(audit[0], session, row, *audit[1])
            return _status(row)
    except IntegrityError:
        log.warning("rollout %d could not be reopened: another rollout is active", state.id)
        return None


def _claimed(rollout_id: int) -> Any:
    """An UPDATE of ``rollout_id`` only while a promotion holds it unfinished (claimed, no end)."""
    from conveyor.store.models import Rollout

    return (
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.status == "promoted", Rollout.ended_at.is_(None))
        .execution_options(synchronize_session=False)
    )


def _end_claim(
    engine: Engine, state: RolloutStatus, record: tuple[Any, ...], settings: Settings, **changes: Any
) -> RolloutStatus | None:
    """End the claimed rollout (``ended_at`` now, plus ``changes``) with ``record`` appended; None when it was no
    longer claimed (another process ended or recovered it)."""
    from conveyor.store.models import Rollout

    with session_scope(engine) as session:
        result: Any = session.execute(_claimed(state.id).values(ended_at=utcnow(), **changes))
        if result.rowcount != 1:
            return None
        row = session.get(Rollout, state.id, populate_existing=True)
        assert row is not None
        _append(settings, session, row, *record)
        return _status(row)


def promote(
    settings: Settings,
    engine: Engine,
    who: str,
    reason: str = "promoted by hand",
    details: dict[str, Any] | None = None,
) -> RolloutStatus:
    """Make the rollout's challenger the champion (the registry alias moves) and end the rollout.

    The rollout is claimed first (status ``promoted``, ``ended_at`` still empty), so of two promotions at once only
    one moves the alias; once it has moved, ``ended_at`` and the decision are stored together. A failed move reopens
    the rollout.

    Raises:
        ConveyorError: no rollout in progress, or it was decided meanwhile.
    """
    recover_interrupted(settings, engine, who)
    return _promote(settings, engine, _require_active(engine), who, reason, details)


def _promote(
    settings: Settings, engine: Engine, state: RolloutStatus, who: str, reason: str, details: dict[str, Any] | None
) -> RolloutStatus:
    """:func:`promote` of the rollout as ``state`` saw it (a decision on a stage promotes only from that stage)."""
    from conveyor.tracking.registry import promote as registry_promote

    _claim(settings, engine, state, None, status="promoted", share=0.0, active_guard=None, claimed_at=utcnow())
    try:
        registry_promote(settings, state.challenger_version, reason=f"rollout {state.id}: {reason}", who=who)
    except BaseException:
        _reopen(engine, state, state.share)
        raise
    record = ("promote", reason, {"version": state.challenger_version, **(details or {})}, who)
    ended = _end_claim(engine, state, record, settings)
    if ended is None:  # recover_interrupted took this claim for dead (its move outlived STALE_CLAIM_S)
        raise ConveyorError(f"rollout {state.id}: the alias moved after its promotion was given up; see the audit")
    return ended


def rollback(
    settings: Settings,
    engine: Engine,
    who: str,
    reason: str = "rolled back by hand",
    details: dict[str, Any] | None = None,
) -> RolloutStatus | None:
    """End the rollout in progress: every request goes back to the champion. Without a rollout in progress, give the
    champion alias back to the previous champion (:func:`conveyor.tracking.registry.rollback`).

    Raises:
        ConveyorError: nothing to roll back, or the rollout was decided meanwhile.
    """
    from conveyor.tracking.registry import rollback as registry_rollback

    recover_interrupted(settings, engine, who)
    state = active_rollout(engine)
    if state is None:
        registry_rollback(settings, reason=reason, who=who)
        return latest_rollout(engine)
    record = ("rollback", reason, {"version": state.challenger_version, **(details or {})}, who)
    return _claim(settings, engine, state, record, status="rolled_back", ended_at=utcnow(), share=0.0,
                  active_guard=None)  # fmt: skip
