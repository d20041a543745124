"""The drop-folder watcher: quiet files only, one batch at a time, nothing lost when it is killed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conveyor.config import Settings
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.pipelines import watch as watch_module
from conveyor.pipelines.watch import collect_batch, pending_batches, watch


def lean_settings(home: Path) -> Settings:
    return Settings(
        home=home,
        preprocess={"size": (64, 64)},  # type: ignore[arg-type]
        features={"extractors": ["intensity"]},  # type: ignore[arg-type]
        training={"families": ["logreg"], "extractors": ["intensity"], "cv_folds": 3, "bootstrap": 200},  # type: ignore[arg-type]
    )


def file_cases(settings: Settings, n_per_class: int, seed: int) -> list[Path]:
    """Generate cases straight into the drop folders, aged past the quiet period."""
    paths = generate_dataset(settings.incoming_dir, SyntheticSpec(n_per_class=n_per_class, size=96, seed=seed))
    old = time.time() - 60
    for path in paths:
        os.utime(path, (old, old))
    return paths


def test_a_file_still_being_written_is_left_alone(tmp_path: Path) -> None:
    settings = lean_settings(tmp_path / "ws")
    quiet = file_cases(settings, 1, seed=1)
    busy = settings.incoming_dir / "tumour" / "copying.png"
    busy.write_bytes(quiet[0].read_bytes())  # just written: not quiet yet
    batch = collect_batch(settings, quiet_seconds=30)
    assert batch is not None
    assert sorted(p.name for p in batch.rglob("*") if p.is_file()) == sorted(p.name for p in quiet)
    assert busy.exists()


def test_a_file_outside_a_label_folder_is_taken_too(tmp_path: Path) -> None:
    settings = lean_settings(tmp_path / "ws")
    settings.incoming_dir.mkdir(parents=True)
    stray = settings.incoming_dir / "stray.png"
    stray.write_bytes(b"not waiting forever")
    old = time.time() - 60
    os.utime(stray, (old, old))
    batch = collect_batch(settings, quiet_seconds=1)
    assert batch is not None and (batch / "stray.png").exists()  # ingest then quarantines it as no_label
    assert not stray.exists()


def test_no_quiet_file_means_no_batch(tmp_path: Path) -> None:
    settings = lean_settings(tmp_path / "ws")
    (settings.incoming_dir / "tumour").mkdir(parents=True)
    assert collect_batch(settings) is None


@pytest.mark.slow
def test_watch_once_ingests_trains_the_first_champion_and_empties_the_drop_folder(tmp_path: Path) -> None:
    settings = lean_settings(tmp_path / "ws")
    file_cases(settings, 40, seed=2)
    [result] = watch(settings, once=True, quiet_seconds=1)
    assert (result.status, result.files) == ("success", 80)
    assert result.outputs["ingest"]["stored"] == 80
    assert result.outputs["monitor"]["skipped"] == "no champion yet"
    assert result.outputs["train"]["alias"] == "champion"
    assert [p for p in settings.incoming_dir.rglob("*.png") if ".processed" not in p.parts] == []
    assert pending_batches(settings) == []


@pytest.mark.slow
def test_a_watcher_killed_mid_batch_completes_the_batch_once_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(tmp_path / "ws")
    file_cases(settings, 40, seed=3)

    def killed(*_args: object, **_kwargs: object) -> object:
        raise KeyboardInterrupt  # the watcher dies after collecting, before the batch's pipeline finished

    monkeypatch.setattr(watch_module, "run_pipeline", killed)
    with pytest.raises(KeyboardInterrupt):
        watch(settings, once=True, quiet_seconds=1)
    [pending] = pending_batches(settings)
    assert sum(1 for p in pending.rglob("*.png")) == 80  # nothing lost: every file is in the batch
    monkeypatch.undo()
    [result] = watch(settings, once=True, quiet_seconds=1)
    assert (result.batch, result.status, result.outputs["ingest"]["stored"]) == (pending.name, "success", 80)
    assert pending_batches(settings) == []


def test_the_check_counts_quiet_files_and_pending_batches_and_moves_nothing(tmp_path: Path) -> None:
    from conveyor.pipelines.watch import ready_count

    settings = lean_settings(tmp_path / "ws")
    quiet = file_cases(settings, 2, seed=3)
    (settings.incoming_dir / "tumour" / "copying.png").write_bytes(quiet[0].read_bytes())  # not quiet yet
    assert ready_count(settings, quiet_seconds=30) == 4
    assert collect_batch(settings, quiet_seconds=30) is not None
    assert ready_count(settings, quiet_seconds=30) == 4  # now in a pending batch: still to process
    assert ready_count(settings, quiet_seconds=0) == 5


def test_watch_check_prints_the_count_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from conveyor.cli import app

    settings = lean_settings(tmp_path / "ws")
    file_cases(settings, 1, seed=4)
    monkeypatch.setenv("CONVEYOR_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["watch", "--check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"ready": 2}
    assert len(list(settings.incoming_dir.rglob("*.png"))) == 2
