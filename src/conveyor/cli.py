"""The ``conveyor`` command: thin Typer commands that parse options, call one library function and print the result.

Every command takes ``--json`` and then prints exactly one JSON object on stdout; exit status 0 means success.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from conveyor.config import Settings, get_settings
from conveyor.errors import ConveyorError
from conveyor.terminal import JsonOption, emit_json, err, errors, out, print_subgroups

app = typer.Typer(
    name="conveyor",
    help="An MLOps assembly line for biomedical image classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> Settings:
    """The process's settings. Invalid ones (in conveyor.yaml or a CONVEYOR_* variable) end the command with each
    setting's name, what is wrong and the value given, and exit status 2, instead of a traceback."""
    import yaml
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from rich.markup import escape

    try:
        return get_settings()
    except (ValidationError, SettingsError, yaml.YAMLError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']} (got {e['input']!r})" for e in exc.errors()
            )
        else:  # a value that is not even parseable: malformed YAML, or malformed JSON in a CONVEYOR_* variable
            problems = f"{exc}" + ("" if exc.__cause__ is None else f": {exc.__cause__}")
        err.print(
            f"[bold red]error:[/] invalid settings (conveyor.yaml or CONVEYOR_* variables): {escape(problems)}",
            highlight=False,
        )
        raise typer.Exit(2) from None


@contextmanager
def _progress(description: str, enabled: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar on stderr (only on a terminal); yields ``start(total)`` and ``advance(n)``."""
    if not enabled or not err.is_terminal:
        yield (lambda _total: None), (lambda _n: None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield (lambda total: progress.update(task, total=total)), (lambda n: progress.advance(task, n))


@app.command()
def init(as_json: JsonOption = False) -> None:
    """Create the workspace (folders, conveyor.yaml, metadata DB)."""
    from conveyor.workspace import init_workspace

    settings = _settings()
    with errors(as_json):
        home = init_workspace(settings)
    if as_json:
        emit_json({"home": str(home.resolve()), "db_url": settings.resolved_db_url})
    else:
        out.print(f"workspace ready at [bold]{home.resolve()}[/]")


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A folder (<label>/ or train|test/<label>/ inside) or a .zip of one.")],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="CSV with columns path,label[,split] (paths relative to PATH)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Take labelled images in: validate, store once, dedupe, quarantine, split."""
    from conveyor.data.ingest import ingest as run_ingest

    settings = _settings()
    with errors(as_json), _progress("ingesting", not as_json) as (start, advance):
        summary = run_ingest(path, settings, labels_csv=labels, on_start=start, on_file=lambda _file: advance(1))
    if as_json:
        emit_json(summary.to_dict())
        return
    _print_ingest(summary)


def _print_ingest(summary: Any) -> None:
    table = Table(title=f"ingest of {summary.source}")
    for column in ("class", "seen", "stored", "duplicates", "conflicts", "quarantined"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, counts in sorted(summary.by_class.items()):
        table.add_row(
            escape(label), *(str(counts[k]) for k in ("seen", "stored", "duplicates", "conflicts", "quarantined"))
        )
    table.add_row(
        "[bold]all[/]",
        *(f"[bold]{getattr(summary, k)}[/]" for k in ("seen", "stored", "duplicates", "conflicts", "quarantined")),
    )
    out.print(table)
    if summary.nothing_new:
        out.print(f"nothing new: all {summary.seen} files were ingested before")
    elif summary.already_ingested:
        out.print(f"resumed: {summary.already_ingested} files were decided by an earlier run, {summary.new} now")
    if summary.rejected:
        shown = summary.rejected[:20]
        rejects = Table(title=f"quarantined ({len(summary.rejected)})")
        for column in ("file", "reason", "detail"):
            rejects.add_column(column)
        for row in shown:
            rejects.add_row(escape(row["path"]), row["reason"], escape(row["detail"]))
        out.print(rejects)
        if len(summary.rejected) > len(shown):
            out.print(f"... and {len(summary.rejected) - len(shown)} more (see quarantine/ or use --json)")
    if summary.missing_from_csv:
        out.print(f"[yellow]{len(summary.missing_from_csv)} files listed in the labels CSV do not exist[/]")
    for warning in summary.warnings:
        out.print(f"[yellow]warning: {escape(warning)}[/]")
    if summary.masks:
        out.print(f"{summary.masks} segmentation masks stored with their images")
    if summary.clips:
        out.print(f"{summary.clips} video clips stored as {summary.frames} frames")
    if summary.quality_flagged:
        flagged = ", ".join(f"{measure} {n}" for measure, n in summary.quality_flagged.items())
        out.print(f"[yellow]stored, flagged by ingest.quality:[/] {flagged}")
    out.print(f"dataset version [bold]{summary.dataset_version}[/]")


@app.command()
def datasets(as_json: JsonOption = False) -> None:
    """List the dataset versions, oldest first."""
    from conveyor.data.versions import list_versions
    from conveyor.workspace import open_workspace

    with errors(as_json):
        versions = list_versions(open_workspace(_settings()))
    if as_json:
        emit_json({"versions": [v.__dict__ for v in versions]})
        return
    table = Table(title="dataset versions")
    for column in ("id", "created", "images", "classes (train/test)"):
        table.add_column(column)
    for v in versions:
        classes = ", ".join(f"{k} {c['train']}/{c['test']}" for k, c in v.by_class.items())
        table.add_row(v.id, v.created_at.strftime("%Y-%m-%d %H:%M:%S"), str(v.n_images), classes)
    out.print(table)


@app.command()
def conflicts(
    resolve: Annotated[str | None, typer.Option(help="sha256 (or a unique prefix) of the image to resolve.")] = None,
    label: Annotated[str | None, typer.Option(help="The label it really has (with --resolve).")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    source: Annotated[
        list[Path] | None,
        typer.Option(help="A folder or zip the files came from: its paths are shown instead of their stored hashes."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List label conflicts (same bytes under two labels), or resolve one with --resolve SHA --label LABEL."""
    from conveyor.data.conflicts import list_conflicts, resolve_conflict
    from conveyor.tracking.registry import actor

    settings = _settings()
    with errors(as_json):
        if resolve is not None:
            if label is None:
                raise ConveyorError("--resolve needs --label: the label the image really has")
            version = resolve_conflict(settings, resolve, label, actor(), reason)
            if as_json:
                emit_json({"resolved": resolve, "label": label, "dataset_version": version})
            else:
                out.print(f"resolved {resolve} as {label!r}; dataset version [bold]{version}[/]")
            return
        found = list_conflicts(settings, source or [])
    if as_json:
        emit_json({"conflicts": [c.__dict__ for c in found]})
        return
    table = Table(title=f"label conflicts ({len(found)})")
    for column in ("sha256", "stored as", "also filed as", "files"):
        table.add_column(column)
    for c in found:
        table.add_row(c.sha256[:16], c.stored_label, ", ".join(c.other_labels), "\n".join(c.paths))
    out.print(table)


@app.command()
def features(
    workers: Annotated[int | None, typer.Option(help="Processes to use; default every core.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Compute the missing topological and intensity features of every stored image (and inside the segmented region
    too, with features.roi: segmentation)."""
    from conveyor.features.store import compute_features
    from conveyor.training.segmentation import feature_region

    settings = _settings()
    with errors(as_json), _progress("features", not as_json) as (start, advance):
        region = feature_region(settings)
        summary = compute_features(settings, region=region, workers=workers, on_start=start, on_progress=advance)
    if as_json:
        emit_json(summary.to_dict())
        return
    _print_features(summary)


def _print_features(summary: Any) -> None:
    table = Table(title="feature store")
    for column in ("extractor", "rows", "table"):
        table.add_column(column)
    for name, info in summary.tables.items():
        table.add_row(name, str(info["rows"]), info["path"])
    out.print(table)
    if summary.computed == 0:
        out.print(f"nothing to compute: all {summary.cached} images already have every feature")
    else:
        out.print(f"computed {summary.computed} images ({summary.diagrams_cached} from cached diagrams)")
    if summary.roi is not None:
        out.print(f"inside region {summary.roi['region']} (features.roi): computed {summary.roi['computed']}, "
                  f"{summary.roi['cached']} already there")  # fmt: skip
    for failure in summary.failed:
        out.print(f"[red]failed[/] {failure['sha256'][:12]}: {failure['reason']}")


SearchModeOption = Annotated[
    str | None,
    typer.Option(
        "--search",
        help="race (successive halving, then the finalists' whole grids), grid (every candidate's whole grid), "
        "refit (the last search's best candidates, their parameters), auto (refit unless the data grew or drifted); "
        "default training.search.mode.",
    ),
]


@app.command()
def train(
    version: Annotated[str | None, typer.Option(help="Dataset version to train on; default the latest.")] = None,
    search: SearchModeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search the extractor x family candidates, compare with baselines, register the best if it passes the gate."""
    from conveyor.training.search import SEARCH_MODES
    from conveyor.training.train import train as run_train

    settings = _settings()
    if search is not None and search not in (*SEARCH_MODES, "auto"):
        err.print(f"[bold red]error:[/] --search must be race, grid, refit or auto, got {search!r}")
        raise typer.Exit(2)
    with errors(as_json), _search_progress(not as_json) as progress:
        result = run_train(settings, version=version, mode=search, on_progress=progress)
    if as_json:
        emit_json(result.to_dict())
        return
    _print_training(result)


@contextmanager
def _search_progress(enabled: bool) -> Iterator[Callable[[int, int, str | None, float | None], None] | None]:
    """One bar for a search: fits done of planned, and the best candidate so far (on stderr, on a terminal)."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("searching", total=None)

        def update(done: int, total: int, best: str | None, score: float | None) -> None:
            label = "searching" if best is None else f"searching (best so far {best}, CV score {score:.3f})"
            progress.update(task, completed=done, total=max(total, done), description=label)

        yield update


def _print_training(result: Any, compact: bool = False) -> None:
    """The search line and the candidate table (``compact``: the finalists only, the raced-out counted)."""
    search = result.search
    out.print(
        f"search [bold]{search.mode}[/] ({search.reason}): {search.fits} fits in {search.seconds:.1f} s"
        + "".join(
            f"; {'final' if i == len(search.rounds) - 1 else 'round ' + str(r['round'])}: {r['configs']} configs on "
            f"{r['n']} images x {r['folds']} folds"
            for i, r in enumerate(search.rounds)
        )
    )
    from conveyor.training.evaluate import METRIC_LABELS

    metric = result.metric
    label = METRIC_LABELS[metric]
    table = Table(title=f"candidates on dataset {result.dataset_version} (finalists by CV, then the raced out)")
    columns = ["candidate", f"CV {label}", "stage", f"test {label} [95% interval]", "test - CV", "F1", "ROC-AUC"]
    columns.append("fit s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("candidate", "stage") else "right", no_wrap=True)
    raced_out = [c for c in result.candidates if c.test is None]

    def test_cells(m: Any, dim: bool, cv: float | None = None) -> list[str]:
        value, interval = getattr(m, metric), m.intervals.get(metric)
        shown = f"{value:.3f}" + ("" if interval is None else f" [{interval.low:.2f}, {interval.high:.2f}]")
        auc = "-" if m.roc_auc is None else f"{m.roc_auc:.3f}"
        cells = [shown, "" if cv is None else f"{value - cv:+.3f}", f"{m.f1:.3f}", auc]
        return [f"[dim]{c}[/]" for c in cells] if dim else cells

    for c in result.candidates:
        stage = c.stage if c.stage == "final" else f"out, {c.stage} (n={c.n})"
        if c.test is None and compact:
            continue
        if c.test is None:
            table.add_row(f"[dim]{c.name}[/]", f"[dim]{c.cv_score:.3f} ± {c.cv_score_std:.3f}[/]", f"[dim]{stage}[/]",
                          "-", "-", "-", "-", f"{c.fit_seconds:.1f}")  # fmt: skip
            continue
        cv = f"{c.cv_score:.3f} ± {c.cv_score_std:.3f}"
        table.add_row(c.name, cv, stage, *test_cells(c.test, False, c.cv_score), f"{c.fit_seconds:.1f}")
    for name, m in result.baselines.items():
        table.add_row(f"[dim]{name}[/]", "", "", *test_cells(m, True), "")
    out.print(table)
    if compact and raced_out:
        out.print(f"{len(raced_out)} more candidates left the race early (`conveyor train --json` lists them)")
    cal = result.calibrated
    out.print(
        f"best: [bold]{result.best.name}[/], calibrated test {label} {getattr(cal, metric):.3f} (F1 {cal.f1:.3f}), "
        f"calibration error (ECE) {'-' if cal.ece is None else f'{cal.ece:.3f}'}"
        + ("" if cal.ece_chance is None else f" (a calibrated model shows {cal.ece_chance:.3f} on {cal.n} images)")
    )
    if result.clip_test is not None:
        clip = result.clip_test
        out.print(f"per video clip (mean of its frames): test {label} {getattr(clip, metric):.3f} on {clip.n} clips")
    _print_conformal(result.conformal)
    if result.subgroups is not None:
        print_subgroups(result.subgroups.to_dict(), "the test split", label)
    if result.registered_version is not None:
        out.print(f"registered as version {result.registered_version}, alias [bold]{result.alias}[/]")
    else:
        out.print("[yellow]not registered:[/] " + "; ".join(result.gate.reasons))


def _print_conformal(report: dict[str, Any] | None) -> None:
    """The prediction sets on the test split: coverage per class against each target, and the singleton share."""
    if report is None:
        return
    if not report["calibrated"]:
        out.print(f"[dim]{report['reason']}[/]")
        return
    held = ", ".join(f"{c} {n}" for c, n in report["n_calibration"].items())
    table = Table(title=f"prediction sets on the test split (calibrated on {held})")
    levels = report["levels"]
    classes = list(next(iter(levels.values()))["per_class"])
    for column in ("target", *classes, "all", "singletons"):
        table.add_column(column, justify="right")
    for level, found in levels.items():
        cells = []
        for name in classes:
            c = found["per_class"][name]
            mark = "" if c["met"] else " [red]under[/]"
            if c.get("always_in_set"):  # too few calibration cases for a threshold at this coverage
                mark += " [yellow]in every set[/]"
            if c["coverage"] is None:  # no test image of this class
                cells.append("-")
                continue
            cells.append(f"{c['coverage']:.3f} [{c['low']:.2f}, {c['high']:.2f}]{mark}")
        table.add_row(level, *cells, f"{found['coverage']:.3f}", f"{found['singleton_share']:.0%}")
    out.print(table)
    if any(c.get("always_in_set") for found in levels.values() for c in found["per_class"].values()):
        out.print(
            "[yellow]in every set[/]: too few calibration images of that class for a threshold at that coverage "
            "(19 are needed at 0.95, 9 at 0.9): its coverage is 1 by construction"
        )


@app.command()
def segment(
    version: Annotated[str | None, typer.Option(help="Dataset version to train on; default the latest.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train the U-Net on the images that have masks, score it against the trivial baselines, register it if it
    passes (as <model>-segmentation)."""
    from conveyor.training.segmentation import train_segmentation

    settings = _settings()

    def epoch(n: int, row: dict[str, float]) -> None:
        if not as_json:
            err.print(f"epoch {n}: loss {row['loss']:.4f}, validation Dice {row['val_dice']:.3f}")

    with errors(as_json):
        result = train_segmentation(settings, version=version, on_epoch=epoch)
    if as_json:
        emit_json(result.to_dict())
        return
    _print_segmentation(settings, result)


def _print_segmentation(settings: Settings, result: Any) -> None:
    table = Table(title=f"segmentation on dataset {result.dataset_version}: {result.n_test} test images")
    for column in ("", *[f"Dice {c} [95%]" for c in result.classes], "HD95"):
        table.add_column(column, justify="left" if column == "" else "right")
    for name, scored in {"U-Net": result.model, **result.baselines}.items():
        cells = [f"{m:.3f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in scored.dice.values()]
        hd = "-" if scored.hausdorff95 is None else f"{scored.hausdorff95:.1f}"
        table.add_row(name, *cells, hd)
    out.print(table)
    out.print(f"{result.epochs} epochs on {result.n_train} images ({result.n_validation} to stop on)")
    if result.registered_version is not None:
        out.print(f"registered as {settings.model_name}-segmentation version {result.registered_version}, "
                  f"alias [bold]{result.alias}[/]")  # fmt: skip
    else:
        out.print("[yellow]not registered:[/] " + "; ".join(result.reasons))


@app.command()
def models(
    rehash: Annotated[
        int | None,
        typer.Option(
            help="Record the current artifact hashes of this version (one registered before conveyor recorded them, "
            "or restored on purpose): check its files first; the server refuses to load a version whose files "
            "differ from its record."
        ),
    ] = None,
    explain: Annotated[
        int | None,
        typer.Option(
            help="Show this version's permutation importance on its test split: the extractor groups and the top "
            "features by how much the metric drops when they are shuffled, and the plot."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered model versions, their aliases, and the audit history (or explain one version)."""
    from conveyor.tracking.registry import audit, history, list_versions

    settings = _settings()
    if explain is not None:
        _explain(settings, explain, as_json)
        return
    with errors(as_json):
        if rehash is not None:
            from conveyor.tracking.integrity import record_artifacts

            recorded = record_artifacts(settings, rehash)
            audit(settings, "rehash", settings.model_name, "artifact hashes recorded by hand",
                  {"version": rehash, "artifacts": recorded})  # fmt: skip
        versions = list_versions(settings)
        records = history(settings, settings.model_name)
    if as_json:
        emit_json(
            {
                "model": settings.model_name,
                "versions": [v.__dict__ for v in versions],
                "history": [r.__dict__ for r in records],
            }
        )
        return
    table = Table(title=f"model {settings.model_name}")
    for column in ("version", "aliases", "created", "run"):
        table.add_column(column)
    for v in versions:
        table.add_row(str(v.version), ", ".join(v.aliases), v.created.strftime("%Y-%m-%d %H:%M:%S"), v.run_id or "")
    out.print(table)
    log = Table(title="history")
    for column in ("when", "who", "action", "version", "why"):
        log.add_column(column)
    for r in records:
        log.add_row(r.at.strftime("%Y-%m-%d %H:%M:%S"), r.actor, r.action, str(r.details.get("version", "")), r.reason)
    out.print(log)


def _explain(settings: Settings, version: int, as_json: bool) -> None:
    from conveyor.tracking.explain import importance_of

    with errors(as_json):
        found = importance_of(settings, version)
    if as_json:
        emit_json(found)
        return
    metric = found["metric"]
    out.print(
        f"model {settings.model_name} v{version} ({found['candidate']}): test {metric} {found['baseline']:.3f}; "
        f"the drop when shuffled, mean ± std over {found['repeats']} shuffles"
    )
    for title, rows, name in (
        ("extractor groups", found["groups"], "group"),
        (f"top {len(found['features'])} features", found["features"], "feature"),
    ):
        table = Table(title=title)
        for column in (name, "drop", ""):
            table.add_column(column, justify="left" if column == name else "right")
        for row in rows:
            table.add_row(escape(str(row[name])), f"{row['drop']:.4f}", f"± {row['drop_std']:.4f}")
        out.print(table)
    if found["not_computed"]:
        out.print(f"{found['not_computed']} features of the less important groups were not scored one by one "
                  "(training.importance.max_features)")  # fmt: skip
    out.print(f"plot: {found['plot']}")


@app.command()
def promote(
    version: Annotated[int | None, typer.Argument(help="Version to make champion; default the challenger.")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "promoted by hand",
    as_json: JsonOption = False,
) -> None:
    """Make a version (default: the challenger) the champion."""
    from conveyor.tracking.registry import promote as run_promote

    with errors(as_json):
        target = run_promote(_settings(), version, reason)
    if as_json:
        emit_json({"champion": target})
    else:
        out.print(f"version {target} is now the champion")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "rolled back by hand",
    as_json: JsonOption = False,
) -> None:
    """Give the champion alias back to the previous champion."""
    from conveyor.tracking.registry import rollback as run_rollback

    with errors(as_json):
        target = run_rollback(_settings(), reason)
    if as_json:
        emit_json({"champion": target})
    else:
        out.print(f"rolled back: version {target} is the champion again")


@app.command()
def demo(
    n_per_class: Annotated[int, typer.Option(help="Images per class in the generated set.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the generator; the same seed gives the same images.")] = 0,
    story: Annotated[bool, typer.Option(help="Then file four new batches into incoming/ and monitor each.")] = True,
    segment: Annotated[
        bool, typer.Option(help="Generate each slice's lesion mask too and train the segmentation U-Net on them.")
    ] = True,
    serve: Annotated[bool, typer.Option(help="End by serving the champion (--no-serve ends by itself).")] = True,
    as_json: JsonOption = False,
) -> None:
    """The whole line on generated data: generate, ingest, features, train, register, then new batches monitored."""
    from conveyor.data.ingest import ingest as run_ingest
    from conveyor.data.synthetic import SyntheticSpec, generate_dataset
    from conveyor.features.store import compute_features
    from conveyor.pipelines.story import demo_settings
    from conveyor.training.train import train as run_train

    settings = demo_settings(_settings())
    target = settings.home / "demo" / "original"
    with errors(as_json):
        if not target.exists():
            generate_dataset(target, SyntheticSpec(n_per_class=n_per_class, seed=seed, masks=segment))
        with _progress("ingesting demo data", not as_json) as (start, advance):
            summary = run_ingest(target, settings, on_start=start, on_file=lambda _file: advance(1))
        with _progress("features", not as_json) as (start, advance):
            feature_summary = compute_features(settings, on_start=start, on_progress=advance)
        with _search_progress(not as_json) as progress:
            result = run_train(settings, on_progress=progress)
        segmented = None
        if segment and summary.masks:
            from conveyor.training.segmentation import train_segmentation

            with _progress("segmentation epochs", not as_json) as (start, advance):
                start(settings.segmentation.max_epochs)
                segmented = train_segmentation(settings, on_epoch=lambda _n, _row: advance(1))
        if not as_json:
            out.print(f"demo data: {target}")
            _print_ingest(summary)
            _print_features(feature_summary)
            _print_training(result, compact=True)
            if segmented is not None:
                _print_segmentation(settings, segmented)
        batches: list[dict[str, Any]] = []
        if story:
            from conveyor.pipelines.story import run_story

            with _progress("new batches", not as_json) as (start, advance):
                start(4)
                batches = run_story(settings, on_batch=lambda _row: advance(1))
    if as_json:
        payload = {"ingest": summary.to_dict(), "features": feature_summary.to_dict(), "train": result.to_dict(),
                   "segmentation": None if segmented is None else segmented.to_dict()}  # fmt: skip
        emit_json({**payload, "batches": batches})
        return
    if batches:
        _print_batches(batches)
    out.print(f"MLflow UI: mlflow ui --backend-store-uri {settings.resolved_tracking_uri}")
    if serve and not as_json:
        from conveyor.serving.commands import serve as run_serve

        run_serve()


def _print_batches(rows: list[dict[str, Any]]) -> None:
    from conveyor.training.evaluate import METRIC_LABELS

    label = METRIC_LABELS[rows[0]["metric"]] if rows else "score"
    table = Table(title="new batches filed into incoming/, then clinicians' feedback on a rollout")
    model, dummy = f"model {label}", "dummies ref / cur"
    for column in ("batch", "files", model, dummy, "drift", "alerts", "retrain", "rollout"):
        table.add_column(column, no_wrap=column in ("files", dummy, "drift"))
    table.add_column("champion", no_wrap=True)

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in rows:
        drift = (
            "-"
            if r["drift_share"] is None
            else f"{r['drift_share']:.0%}" + (" (drift)" if "drift_share" in r["alerts"] else "")
        )
        retrain = "-" if r["batch"] == "clinician feedback" else "yes" if r["retrain"] else "no"
        if r.get("search"):
            retrain += f" ({r['search']})"
        if r["registered"]:
            retrain += f" -> v{r['registered']} {r['alias']}"
        dummies = "-" if r["dummy_by_reference_score"] is None else (
            f"{f(r['dummy_by_reference_score'])} / {f(r['dummy_by_current_score'])}"
        )  # fmt: skip
        table.add_row(
            r["batch"], str(r["files"]), f(r["model_score"]), dummies, drift, ", ".join(r["alerts"]) or "-", retrain,
            r.get("rollout") or "-", f"v{r['champion_version']}",
        )  # fmt: skip
    out.print(table)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Pipeline: ingest, train or monitor.")],
    path: Annotated[Path | None, typer.Option(help="Folder or .zip to take in (ingest, monitor).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (ingest).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume the last unfinished run with the same parameters.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Run one of the three pipelines on the embedded runner; a re-run resumes from the failed task."""
    from conveyor.pipelines import pipeline, run_pipeline

    settings = _settings()
    params = {k: str(v) for k, v in (("path", path), ("labels", labels)) if v is not None}
    shown = not as_json and err.is_terminal

    def report(task: str, status: str) -> None:
        if shown:
            err.print(f"  {task}: {status}")

    with errors(as_json):
        state = run_pipeline(pipeline(name), settings, params, resume=resume, on_task=report)
    if as_json:
        emit_json(state.to_dict())
        return
    table = Table(title=f"pipeline {name}, run {state.run_id}")
    for column in ("task", "status", "seconds"):
        table.add_column(column)
    for task, info in state.tasks.items():
        table.add_row(task, info["status"], str(info.get("seconds", "")))
    out.print(table)


@app.command()
def watch(
    quiet_seconds: Annotated[float, typer.Option(help="How long a file must be unchanged before it is taken.")] = 5.0,
    once: Annotated[bool, typer.Option(help="Process what is there and stop (for cron or a scheduler).")] = False,
    check: Annotated[
        bool, typer.Option(help="Only count the files --once would take now (a scheduler's sensor).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Watch incoming/<label>/ and run the monitor pipeline on each new batch of labelled cases."""
    from conveyor.pipelines.watch import ready_count
    from conveyor.pipelines.watch import watch as run_watch

    settings = _settings()
    if check:
        ready = ready_count(settings, quiet_seconds)
        if as_json:
            emit_json({"ready": ready})
        else:
            out.print(f"{ready} file(s) ready in {settings.incoming_dir.resolve()}")
        return

    def report(result: Any) -> None:
        if not as_json:
            out.print(
                f"batch {result.batch}: {result.files} files, {result.status}"
                + (f": {result.error}" if result.error else "")
            )

    if not once and not as_json:
        out.print(f"watching {settings.incoming_dir.resolve()}/<label>/ (Ctrl-C to stop)")
    try:
        with errors(as_json):
            results = run_watch(settings, quiet_seconds=quiet_seconds, once=once, on_batch=report)
    except KeyboardInterrupt:
        results = []
    if as_json:
        emit_json({"batches": [r.__dict__ for r in results]})
    if any(r.status == "failed" for r in results):
        raise typer.Exit(2)  # the batch stays pending; a scheduler retries the run


@app.command()
def schema(
    name: Annotated[str, typer.Argument(help="ingest, features, train or monitor.")],
    as_json: JsonOption = False,
) -> None:
    """Print the JSON schema of a command's --json output: its fields, and which are always there (the Airflow DAGs
    read it, so a renamed field fails their task instead of going missing)."""
    from conveyor.pipelines.contracts import CONTRACTS
    from conveyor.pipelines.contracts import schema as contract_schema

    if name not in CONTRACTS:
        err.print(f"[bold red]error:[/] no schema named {name!r}; one of {', '.join(CONTRACTS)}")
        raise typer.Exit(2)
    emit_json(contract_schema(name))


def _register_stage_commands() -> None:
    """Commands that live beside their stage (monitoring, serving)."""
    from conveyor.monitoring.commands import monitor
    from conveyor.serving.commands import rollout_app, serve

    app.command()(monitor)
    app.command()(serve)
    app.add_typer(rollout_app, name="rollout")


_register_stage_commands()


def main() -> None:
    """Entry point of the ``conveyor`` script."""
    from conveyor.logs import route_to_log
    from conveyor.tracking.setup import disable_telemetry

    disable_telemetry()
    from contextlib import suppress

    import yaml

    with suppress(OSError, ValueError, yaml.YAMLError):  # an unusable workspace or settings: the command reports it
        route_to_log(get_settings().logs_dir / "conveyor.log")
    app()
