"""conveyor monitor reports the champion per subgroup of a labelled batch and alerts when one falls behind."""

from __future__ import annotations

from pathlib import Path

from conveyor.data.ingest import ingest
from conveyor.data.synthetic import SyntheticSpec, generate_dataset
from conveyor.monitoring.monitor import monitor_batch
from conveyor.monitoring.report import MonitorReport
from conveyor.training.train import train
from tests.monitoring.conftest import small_settings


def test_a_site_whose_cases_the_champion_gets_wrong_fires_the_subgroup_alert(tmp_path: Path) -> None:
    """A batch whose labels.csv names each image's site; site B's 20 images carry the other class's label (the
    champion answers them wrong), site A's 40 their own: B falls far behind the whole."""
    settings = small_settings(tmp_path / "ws")
    generate_dataset(tmp_path / "src", SyntheticSpec(n_per_class=40, size=96, seed=3))
    ingest(tmp_path / "src", settings)
    assert train(settings).alias == "champion"
    batch = tmp_path / "batch"
    paths = generate_dataset(batch, SyntheticSpec(n_per_class=30, size=96, seed=21), prefix="new")
    lines = ["path,label,site"]
    for path in paths:
        site_b = int(path.stem.rsplit("_", 1)[1]) < 10
        label = path.parent.name
        if site_b:
            label = "no_tumour" if label == "tumour" else "tumour"
        lines.append(f"{path.relative_to(batch).as_posix()},{label},{'B' if site_b else 'A'}")
    (batch / "labels.csv").write_text("\n".join(lines) + "\n")

    summary = monitor_batch(batch, settings)

    report = MonitorReport.model_validate(summary).subgroups
    assert report is not None and report["whole"] == summary["score"]
    sites = [(g["value"], g["n"], g["behind"]) for g in report["groups"] if g["attribute"] == "site"]
    assert sites == [("A", 40, False), ("B", 20, True)]
    (alert,) = [a for a in summary["alerts"] if a["rule"] == "subgroup"]
    assert "site 'B'" in alert["message"] and alert["threshold"] == summary["score"]
