"""Rollout: the sticky router, the policy, and canary/shadow end to end through the API and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conveyor.serving import create_app, rollout
from conveyor.serving.commands import rollout_app
from conveyor.serving.rollout import ArmStats, Case, RolloutStatus, bucket, choose_arm, judge
from conveyor.serving.settings import ServingSettings
from conveyor.tracking.registry import CHAMPION, current_version, history
from tests.serving.conftest import admin, clinician, png, settings_for


def _state(mode: str, share: float) -> RolloutStatus:
    now = datetime.now(UTC)
    return RolloutStatus(1, mode, "active", 0, share, 1, 2, now, now)


@pytest.mark.parametrize("share", [0.01, 0.5, 1.0])
def test_router_sends_about_the_share_to_the_challenger(share: float) -> None:
    rng = np.random.default_rng(0)
    hashes = [rng.bytes(32).hex() for _ in range(20_000)]
    got = sum(choose_arm(_state("canary", share), h) == "challenger" for h in hashes) / len(hashes)
    assert got == pytest.approx(share, abs=0.01)


def test_router_is_sticky_and_monotone_across_stages() -> None:
    rng = np.random.default_rng(1)
    hashes = [rng.bytes(32).hex() for _ in range(2000)]
    at_1 = {h for h in hashes if choose_arm(_state("canary", 0.01), h) == "challenger"}
    at_50 = {h for h in hashes if choose_arm(_state("canary", 0.5), h) == "challenger"}
    assert at_1 <= at_50
    assert bucket("00000000" + "f" * 56) == 0.0


def test_shadow_mode_always_answers_with_the_champion() -> None:
    assert choose_arm(_state("shadow", 0.0), "0" * 64) == "champion"


@pytest.mark.parametrize(
    ("champion", "challenger", "action"),
    [
        (ArmStats(50, 0, 9, 9), ArmStats(50, 0, 30, 30), "wait"),  # champion lacks labels
        (ArmStats(50, 0, 30, 27), ArmStats(50, 0, 30, 26), "advance"),  # not significantly worse
        (ArmStats(50, 0, 30, 28), ArmStats(50, 0, 30, 15), "rollback"),  # significantly worse
        (ArmStats(50, 0, 30, 27), ArmStats(50, 20, 30, 27), "rollback"),  # fails more often
    ],
)
def test_policy(champion: ArmStats, challenger: ArmStats, action: str) -> None:
    cfg = ServingSettings(rollout={"min_feedback": 10})  # type: ignore[arg-type]
    assert judge(champion, challenger, cfg, metric="accuracy").action == action


def _arm(truths: list[str], answers: list[str | None]) -> ArmStats:
    cases = tuple(Case(t, a) for t, a in zip(truths, answers, strict=True))
    correct = sum(c.truth == c.predicted for c in cases)
    return ArmStats(len(cases), sum(a is None for a in answers), len(cases), correct, cases)


TRUTHS = ["no"] * 30 + ["yes"] * 10


def test_balanced_accuracy_rolls_back_a_challenger_that_only_says_the_majority() -> None:
    """Accuracy 0.75 against 0.95 might pass a small test; balanced accuracy 0.5 against 0.95 does not."""
    cfg = ServingSettings(rollout={"min_feedback": 10})  # type: ignore[arg-type]
    champion = _arm(TRUTHS, ["no"] * 28 + ["yes"] * 2 + ["yes"] * 10)
    challenger = _arm(TRUTHS, ["no"] * 40)
    decision = judge(champion, challenger, cfg, metric="balanced_accuracy")
    assert decision.action == "rollback"
    assert decision.scores == (pytest.approx(28 / 30 / 2 + 0.5), 0.5)
    assert decision.p_metric is not None and decision.p_metric < 0.001
    assert decision.to_dict()["metric"] == "balanced_accuracy"


def test_the_same_answers_in_both_arms_advance_with_a_large_p() -> None:
    cfg = ServingSettings(rollout={"min_feedback": 10})  # type: ignore[arg-type]
    answers: list[str | None] = ["no"] * 25 + ["yes"] * 5 + ["yes"] * 8 + ["no"] * 2
    decision = judge(_arm(TRUTHS, answers), _arm(TRUTHS, answers), cfg, metric="f1")
    assert decision.action == "advance"
    assert decision.scores[0] == decision.scores[1] == pytest.approx(2 * 8 / (2 * 8 + 5 + 2))
    assert decision.p_metric is not None and decision.p_metric > 0.4


def test_a_failed_prediction_with_a_label_counts_as_wrong() -> None:
    cfg = ServingSettings(rollout={"min_feedback": 10})  # type: ignore[arg-type]
    right: list[str | None] = list(TRUTHS)
    decision = judge(_arm(TRUTHS, right), _arm(TRUTHS, [None] * 20 + right[20:]), cfg, metric="balanced_accuracy")
    assert decision.scores == (1.0, pytest.approx((10 / 30 + 1.0) / 2))
    assert decision.action == "rollback"


def _canary_client(home, stages=(0.3, 0.6, 1.0)) -> tuple[TestClient, object]:  # type: ignore[no-untyped-def]
    settings = settings_for(home, rollout={"canary_stages": stages, "min_feedback": 8})
    return TestClient(create_app(settings)), settings


def _start(client: TestClient, mode: str) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/admin/rollout/start", json={"mode": mode}, headers=admin())
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_canary_share_stickiness_and_advance_to_promotion(home) -> None:  # type: ignore[no-untyped-def]
    client, settings = _canary_client(home)
    with client:
        assert _start(client, "canary")["rollout"]["share"] == 0.3
        answers = [client.post("/v1/predict", content=png(100 + i)).json() for i in range(120)]
        share = sum(a["arm"] == "challenger" for a in answers) / len(answers)
        assert share == pytest.approx(0.3, abs=0.1)
        assert {a["model"]["version"] for a in answers if a["arm"] == "challenger"} == {2}
        again = client.post("/v1/predict", content=png(100)).json()
        assert (again["arm"], again["model"]["version"]) == (answers[0]["arm"], answers[0]["model"]["version"])
        # Clinicians agree with every prediction: the policy advances the stage as soon as both arms have 8 labels.
        decisions = []
        for n, a in enumerate(answers):
            feedback = {"request_id": a["request_id"], "label": a["label"]}
            body = client.post("/v1/feedback", json=feedback, headers=clinician(n)).json()
            if body["rollout"] is not None:
                decisions.append(body["rollout"])
                break
        assert decisions[0]["decision"]["action"] == "advance"
        assert (decisions[0]["rollout"]["stage"], decisions[0]["rollout"]["share"]) == (1, 0.6)
        # Later stages advance the same way; from the last one the challenger is promoted.
        for stage in (1, 2):
            for i in range(60):
                a = client.post("/v1/predict", content=png(1000 * stage + i)).json()
                feedback = {"request_id": a["request_id"], "label": a["label"]}
                made = client.post("/v1/feedback", json=feedback, headers=clinician(i)).json()
                if made["rollout"] is not None:
                    break
            assert made["rollout"]["decision"]["action"] == "advance", stage
        assert made["rollout"]["rollout"]["status"] == "promoted"
    assert current_version(settings, CHAMPION) == 2
    actions = [r.action for r in history(settings, settings.model_name)]
    assert actions.count("rollout_advance") == 2 and actions[-1] == "rollout_promote"


def test_bad_feedback_rolls_the_canary_back(home) -> None:  # type: ignore[no-untyped-def]
    client, settings = _canary_client(home, stages=(0.5, 1.0))
    with client:
        _start(client, "canary")
        last = None
        for i in range(80):
            a = client.post("/v1/predict", content=png(500 + i)).json()
            wrong = next(c for c in a["probabilities"] if c != a["label"])
            label = wrong if a["arm"] == "challenger" else a["label"]  # the challenger is always wrong
            feedback = {"request_id": a["request_id"], "label": label}
            last = client.post("/v1/feedback", json=feedback, headers=clinician(i)).json()
            if last["rollout"] is not None:
                break
        assert last is not None and last["rollout"]["decision"]["action"] == "rollback"
        assert last["rollout"]["rollout"]["status"] == "rolled_back"
        after = [client.post("/v1/predict", content=png(500 + i)).json()["arm"] for i in range(20)]
        assert set(after) == {"champion"}
    assert current_version(settings, CHAMPION) == 1
    rollback_entry = [r for r in history(settings, settings.model_name) if r.action == "rollout_rollback"][-1]
    assert "significantly below the champion's" in rollback_entry.reason


def test_shadow_scores_every_request_silently(home) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from conveyor.store.db import get_engine, session_scope
    from conveyor.store.models import Prediction

    client, settings = _canary_client(home)
    with client:
        _start(client, "shadow")
        answer = client.post("/v1/predict", content=png(42)).json()
        assert (answer["arm"], answer["model"]["version"]) == ("champion", 1)
        client.app.state.service.log.flush()  # type: ignore[attr-defined]
    with session_scope(get_engine(settings.resolved_db_url)) as session:
        rows = session.scalars(select(Prediction).where(Prediction.request_id == answer["request_id"])).all()
    assert sorted((r.arm, r.model_version) for r in rows) == [("champion", 1), ("shadow", 2)]


def test_second_start_is_409(home) -> None:  # type: ignore[no-untyped-def]
    client, _ = _canary_client(home)
    with client:
        _start(client, "ab")
        response = client.post("/v1/admin/rollout/start", json={"mode": "canary"}, headers=admin())
    assert response.status_code == 409
    assert response.json()["detail"].endswith("(ab) is already in progress; promote or roll it back")


def test_cli_start_status_advance_and_rollback(home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(home, rollout={"min_feedback": 5})
    monkeypatch.setattr("conveyor.serving.commands._settings", lambda: settings)
    app = typer.Typer()
    app.add_typer(rollout_app, name="rollout")
    runner = CliRunner()

    def run(*args: str) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(app, ["rollout", *args, "--json"])
        return {"code": result.exit_code, **json.loads(result.stdout.strip().splitlines()[-1])}

    started = run("start", "canary")
    assert (started["code"], started["rollout"]["share"]) == (0, 0.01)
    status = run("status")
    assert status["decision"]["action"] == "wait"
    waited = run("advance")
    assert (waited["decision"]["action"], waited["rollout"]["stage"]) == ("wait", 0)
    forced = run("advance", "--force")
    assert (forced["rollout"]["stage"], forced["rollout"]["share"]) == (1, 0.5)
    rolled = run("rollback")
    assert (rolled["code"], rolled["rollout"]["status"], rolled["champion"]) == (0, "rolled_back", 1)
    again = run("rollback")  # no rollout now, and no earlier champion to go back to
    assert (again["code"], again["error"]) == (1, "model 'conveyor' has no earlier champion to roll back to")
    assert rollout.active_rollout(__import__("conveyor.workspace").workspace.open_workspace(settings)) is None


def test_of_two_decisions_taken_at_once_one_wins(home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Two processes (or two feedback requests) judging the same stage: the second finds it decided, nothing moves."""
    from conveyor.errors import ConveyorError
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    seen = rollout.start(settings, engine, "canary", "test")
    rollout.advance(settings, engine, "first", force=True)
    monkeypatch.setattr(rollout, "_require_active", lambda engine: seen)  # the second saw stage 0 as well
    with pytest.raises(ConveyorError, match=f"rollout {seen.id} was decided meanwhile"):
        rollout.advance(settings, engine, "second", force=True)
    with pytest.raises(ConveyorError, match="decided meanwhile"):
        rollout.promote(settings, engine, "second")
    state = rollout.active_rollout(engine)
    assert state is not None and state.stage == 1
    assert current_version(settings, CHAMPION) == 1  # the stale promotion never moved the alias


def test_one_identity_cannot_move_a_rollout_and_the_audit_names_whose_labels_did(home) -> None:  # type: ignore[no-untyped-def]
    client, settings = _canary_client(home, stages=(0.5, 1.0))
    with client:
        _start(client, "ab")
        answers = [client.post("/v1/predict", content=png(700 + i)).json() for i in range(60)]
        for a in answers:  # one client labels everything in the challenger's favour: the policy waits
            feedback = {"request_id": a["request_id"], "label": a["label"]}
            assert client.post("/v1/feedback", json=feedback, headers=clinician(0)).json()["rollout"] is None
        status = client.get("/v1/admin/rollout", headers=admin()).json()
        assert status["rollout"]["status"] == "active"
        a = client.post("/v1/predict", content=png(800)).json()
        feedback = {"request_id": a["request_id"], "label": a["label"]}
        made = client.post("/v1/feedback", json=feedback, headers=clinician(1)).json()["rollout"]
    assert made["decision"]["action"] == "advance"
    assert made["decision"]["sources"] == {"clinician-a": 60, "clinician-b": 1}
    promoted = [r for r in history(settings, settings.model_name) if r.action == "rollout_promote"][-1]
    assert promoted.details["decision"]["sources"] == {"clinician-a": 60, "clinician-b": 1}


def test_the_stage_reads_back_labelled_cases_and_counts_the_rest(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.serving.rollout import active_rollout, stage_stats
    from conveyor.store.db import get_engine

    client, settings = _canary_client(home, stages=(0.5, 1.0))
    with client:
        _start(client, "canary")
        answers = [client.post("/v1/predict", content=png(300 + i)).json() for i in range(12)]
        for i, a in enumerate(answers[:6]):  # the first six labelled with the model's own answer
            client.post("/v1/feedback", json={"request_id": a["request_id"], "label": a["label"]}, headers=clinician(i))
    engine = get_engine(settings.resolved_db_url)  # type: ignore[attr-defined]
    state = active_rollout(engine)
    assert state is not None
    champion, challenger = stage_stats(engine, state, probabilities=True)
    arms = {"champion": champion, "challenger": challenger}
    for name, arm in arms.items():
        assert arm.predictions == sum(a["arm"] == name for a in answers)
        assert arm.labelled == arm.correct == sum(a["arm"] == name for a in answers[:6]) == len(arm.cases)
        assert all(c.probabilities is not None and set(c.probabilities) == {"no_tumour", "tumour"} for c in arm.cases)
    plain, _ = stage_stats(engine, state)
    assert all(c.probabilities is None for c in plain.cases)


def test_of_two_starts_at_once_one_wins_and_an_ended_rollout_frees_the_slot(
    home, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Two processes that both saw no rollout in progress: the unique active_guard lets one start."""
    from conveyor.errors import ConveyorError
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    first = rollout.start(settings, engine, "canary", "first")
    with monkeypatch.context() as patched:
        patched.setattr(rollout, "active_rollout", lambda engine: None)  # the second saw none either
        with pytest.raises(ConveyorError, match="another rollout was started meanwhile; nothing done"):
            rollout.start(settings, engine, "ab", "second")
    current = rollout.active_rollout(engine)
    assert current is not None and (current.id, current.mode) == (first.id, "canary")
    assert [r.action for r in history(settings, settings.model_name)].count("rollout_start") == 1
    rollout.rollback(settings, engine, "test")
    again = rollout.start(settings, engine, "ab", "third")
    assert (again.id, again.status, again.mode) == (first.id + 1, "active", "ab")


def test_a_stage_moves_only_with_its_decision_stored(home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The move, the decision on the rollout row and the audit entry are one transaction: if one fails, none is kept."""
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    started = rollout.start(settings, engine, "canary", "test")

    def broken_audit(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the audit log is down")

    with monkeypatch.context() as patched:
        patched.setattr("conveyor.tracking.registry.audit", broken_audit)
        with pytest.raises(RuntimeError, match="the audit log is down"):
            rollout.advance(settings, engine, "test", force=True)
    state = rollout.active_rollout(engine)
    assert state is not None and (state.stage, len(state.decisions)) == (0, 1) == (
        started.stage,
        len(started.decisions),
    )
    _, moved = rollout.advance(settings, engine, "test", force=True)
    assert (moved.stage, [d["action"] for d in moved.decisions]) == (1, ["start", "advance"])


def test_a_rollout_mark_changes_with_every_move(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    marks = [rollout.rollout_mark(engine)]
    rollout.start(settings, engine, "canary", "test")
    marks.append(rollout.rollout_mark(engine))
    rollout.advance(settings, engine, "test", force=True)
    marks.append(rollout.rollout_mark(engine))
    promoted = rollout.promote(settings, engine, "test")
    marks.append(rollout.rollout_mark(engine))
    assert marks[0] is None and len(set(marks)) == 4
    assert promoted.status == "promoted" and promoted.decisions[-1]["action"] == "promote"
    assert current_version(settings, CHAMPION) == 2


def _killed_promotion(settings, engine, *, moved: bool, minutes_ago: float = 11.0) -> RolloutStatus:  # type: ignore[no-untyped-def]
    """What a promotion killed after its claim leaves: the rollout claimed ``minutes_ago``, the alias moved or not."""
    from datetime import timedelta

    from conveyor.store.models import utcnow
    from conveyor.tracking.registry import promote as registry_promote

    state = rollout.start(settings, engine, "canary", "test")
    claimed_at = utcnow() - timedelta(minutes=minutes_ago)
    claim = {"status": "promoted", "share": 0.0, "active_guard": None, "claimed_at": claimed_at}
    rollout._claim(settings, engine, state, None, **claim)
    if moved:
        registry_promote(settings, state.challenger_version, reason="killed right after this", who="test")
    return state


def _ended_at(engine, rollout_id: int) -> object:  # type: ignore[no-untyped-def]
    from conveyor.store.db import session_scope
    from conveyor.store.models import Rollout

    with session_scope(engine) as session:
        row = session.get(Rollout, rollout_id)
        assert row is not None
        return row.ended_at


def test_a_promotion_killed_after_the_alias_moved_is_finished(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    state = _killed_promotion(settings, engine, moved=True)
    [recovered] = rollout.recover_interrupted(settings, engine, "ops")
    assert (recovered.id, recovered.status) == (state.id, "promoted")
    assert recovered.decisions[-1]["action"] == "promote" and recovered.decisions[-1]["recovered"] is True
    assert _ended_at(engine, state.id) is not None
    assert current_version(settings, CHAMPION) == state.challenger_version


def test_a_promotion_killed_before_the_alias_moved_reopens_the_rollout(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    state = _killed_promotion(settings, engine, moved=False)
    [recovered] = rollout.recover_interrupted(settings, engine, "ops")
    assert (recovered.status, recovered.share, recovered.decisions[-1]["action"]) == ("active", state.share, "recover")
    assert rollout.active_rollout(engine) == recovered
    assert current_version(settings, CHAMPION) == state.champion_version


def test_the_next_promote_after_a_killed_one_promotes(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    state = _killed_promotion(settings, engine, moved=False)
    promoted = rollout.promote(settings, engine, "ops")
    assert (promoted.id, promoted.status) == (state.id, "promoted")
    assert [d["action"] for d in promoted.decisions] == ["start", "recover", "promote"]
    assert current_version(settings, CHAMPION) == state.challenger_version


def test_a_promotion_claimed_moments_ago_is_left_to_its_process(home) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    state = _killed_promotion(settings, engine, moved=False, minutes_ago=0.0)
    assert rollout.recover_interrupted(settings, engine, "ops") == []
    latest = rollout.latest_rollout(engine)
    assert latest is not None and (latest.id, latest.status) == (state.id, "promoted")
    assert _ended_at(engine, state.id) is None


def test_rollout_status_finishes_a_killed_promotion(home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from conveyor.workspace import open_workspace

    settings = settings_for(home)
    engine = open_workspace(settings)
    state = _killed_promotion(settings, engine, moved=True)
    monkeypatch.setattr("conveyor.serving.commands._settings", lambda: settings)
    app = typer.Typer()
    app.add_typer(rollout_app, name="rollout")
    out = CliRunner().invoke(app, ["rollout", "status", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout.strip().splitlines()[-1])["rollout"]
    assert (shown["id"], shown["status"], shown["decisions"][-1]["action"]) == (state.id, "promoted", "promote")
