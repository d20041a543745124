"""The embedded runner: dependency order, a failure stops dependants and names the task, a re-run resumes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.pipelines.runner import Pipeline, PipelineFailed, Task, run_pipeline

calls: list[str] = []


def step(name: str, fail_once: set[str] | None = None):  # type: ignore[no-untyped-def]
    def fn(settings: Settings, params: Mapping[str, Any], upstream: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        calls.append(name)
        if fail_once is not None and name in fail_once:
            fail_once.discard(name)
            raise RuntimeError(f"{name} broke")
        return {"name": name, "inputs": sorted(upstream), "total": 1 + sum(u["total"] for u in upstream.values())}

    return fn


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def diamond(fail_once: set[str] | None = None) -> Pipeline:
    return Pipeline(
        "diamond",
        (
            Task("d", step("d", fail_once), ("b", "c")),
            Task("b", step("b", fail_once), ("a",)),
            Task("c", step("c", fail_once), ("a",)),
            Task("a", step("a", fail_once)),
        ),
    )


def test_tasks_run_in_dependency_order_and_see_their_inputs(settings: Settings) -> None:
    state = run_pipeline(diamond(), settings)
    assert calls == ["a", "b", "c", "d"]
    assert state.status == "success"
    assert state.tasks["d"]["output"] == {"name": "d", "inputs": ["b", "c"], "total": 5}


def test_a_failure_stops_the_dependants_and_names_the_task(settings: Settings) -> None:
    with pytest.raises(PipelineFailed, match="task 'c' failed: c broke"):
        run_pipeline(diamond({"c"}), settings)
    assert calls == ["a", "b", "c"]
    [record] = (settings.logs_dir / "pipelines" / "diamond").glob("*.json")
    saved = json.loads(record.read_text())
    assert (saved["status"], saved["failed_task"], saved["tasks"]["c"]["type"]) == ("failed", "c", "RuntimeError")


def test_a_rerun_resumes_from_the_failed_task(settings: Settings) -> None:
    fails = {"c"}
    with pytest.raises(PipelineFailed):
        run_pipeline(diamond(fails), settings)
    calls.clear()
    state = run_pipeline(diamond(fails), settings)
    assert calls == ["c", "d"]  # a and b were not run again
    assert state.tasks["d"]["output"]["total"] == 5
    assert len(list((settings.logs_dir / "pipelines" / "diamond").glob("*.json"))) == 1


def test_other_parameters_start_a_new_run(settings: Settings) -> None:
    with pytest.raises(PipelineFailed):
        run_pipeline(diamond({"c"}), settings, {"path": "x"})
    calls.clear()
    run_pipeline(diamond(), settings, {"path": "y"})
    assert calls == ["a", "b", "c", "d"]


def test_a_task_can_be_skipped_by_its_condition(settings: Settings) -> None:
    pipe = Pipeline("branch", (Task("a", step("a")), Task("b", step("b"), ("a",), when=lambda out: False)))
    state = run_pipeline(pipe, settings)
    assert (calls, state.tasks["b"]) == (["a"], {"status": "skipped"})


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ((Task("a", step("a"), ("zzz",)),), "task 'a' depends on unknown tasks \\['zzz'\\]"),
        ((Task("a", step("a"), ("b",)), Task("b", step("b"), ("a",))), "has a cycle among \\['a', 'b'\\]"),
    ],
)
def test_a_malformed_graph_is_refused(settings: Settings, tasks: tuple[Task, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_pipeline(Pipeline("bad", tasks), settings)


def test_the_ingest_pipeline_takes_a_folder_in_and_computes_features(tmp_path: Path) -> None:
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset
    from conveyor.pipelines import pipeline

    settings = Settings(home=tmp_path / "ws", features={"extractors": ["intensity"]})  # type: ignore[arg-type]
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=3, size=64))
    state = run_pipeline(pipeline("ingest"), settings, {"path": str(tmp_path / "src")})
    assert state.tasks["ingest"]["output"]["stored"] == 6
    assert state.tasks["features"]["output"]["tables"]["intensity"]["rows"] == 6


def test_the_monitor_pipeline_ingests_and_computes_features_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.data.ingest as ingest_module
    import conveyor.features.store as feature_store
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset
    from conveyor.pipelines import pipeline
    from conveyor.training.train import train

    settings = Settings(
        home=tmp_path / "ws",
        features={"extractors": ["intensity"]},
        training={"families": ["logreg"], "extractors": ["intensity"], "cv_folds": 3},
    )  # type: ignore[arg-type]
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=30, size=64, seed=1))
    ingest_module.ingest(tmp_path / "src", settings)
    train(settings)
    generate_dataset(tmp_path / "batch", SyntheticSpec(n_per_class=8, size=64, seed=2), prefix="new")

    counted: dict[str, int] = {"ingest": 0, "compute_features": 0}

    def counting(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(ingest_module, "ingest", counting("ingest", ingest_module.ingest))
    monkeypatch.setattr(feature_store, "compute_features", counting("compute_features", feature_store.compute_features))
    state = run_pipeline(pipeline("monitor"), settings, {"path": str(tmp_path / "batch")})

    assert counted == {"ingest": 1, "compute_features": 1}
    assert state.tasks["monitor"]["output"]["performance"]["model"]["n"] == 16  # the whole batch, taken in once
