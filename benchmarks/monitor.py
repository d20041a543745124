"""Monitoring cost against the size of the reference: 25 new images vs references of 250, 2,500 and 25,000 images.

The claim (issue 7): the time grows with the reference only through the drift computation itself; features of old
images are never recomputed (they are read from the store; here the reference rows are synthetic feature rows drawn
around real demo images' features, since computing 25,000 images' features is not what is measured). Stages timed:

* ``current``: decode, preprocess and compute the 25 new images' intensity features (the only images processed);
* ``drift``: Evidently's per-column tests over the 34 feature columns and 9 image statistics;
* ``ood``: fitting the Mahalanobis detector (out-of-fold threshold) and scoring the batch;
* ``perf``: the model and both dummies on the 25 labels (bootstrap 200);
* ``html``: Evidently's report of 24 columns (reference sampled to 5,000 rows);

plus a 10,000-row x 200-column drift check. Run: ``python benchmarks/monitor.py``.
"""

from __future__ import annotations

import io
import time
from functools import partial

import numpy as np
import pandas as pd
from PIL import Image

from conveyor.config import PreprocessSettings
from conveyor.data.synthetic import render_slice
from conveyor.features.pipeline import FeaturePipeline
from conveyor.monitoring.drift import DriftResult, drift_report_html, drift_table
from conveyor.monitoring.ood import OODDetector
from conveyor.monitoring.performance import compare_with_dummies


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def ood(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    return OODDetector().fit(reference).flags(current)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    import tempfile
    from pathlib import Path

    import evidently.presets  # noqa: F401  (imported before timing: its import is not the stage being measured)
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    pipeline = FeaturePipeline(PreprocessSettings(size=(64, 64)), [("intensity", {})])
    labels = np.array(["no_tumour", "tumour"])
    seed_y = rng.integers(0, 2, 200)
    seed_images = [pipeline.image(png(render_slice(rng, 96, bool(t)))) for t in seed_y]
    seed_X = pipeline.vectors(pipeline.prepare(seed_images))
    columns = pipeline.columns()["intensity"]
    mean, std = seed_X.mean(axis=0), seed_X.std(axis=0) + 1e-9
    new_y = rng.integers(0, 2, 25)
    new_blobs = [png(render_slice(rng, 96, bool(t))) for t in new_y]

    rows = []
    for n in (250, 2500, 25_000):
        picks = rng.integers(0, len(seed_X), n)  # synthetic reference rows: real rows plus a little noise
        ref_X = seed_X[picks] + rng.normal(0, 0.05, (n, len(columns))) * std
        ref_y = seed_y[picks]
        model = LogisticRegression(max_iter=500).fit((ref_X - mean) / std, ref_y)
        reference = pd.DataFrame(ref_X, columns=columns)
        reference["image.width"], reference["image.height"] = 96, 96
        reference["image.brightness"] = rng.normal(0.3, 0.02, n)
        reference["image.format"] = "PNG"

        def current() -> pd.DataFrame:
            images = [pipeline.image(blob) for blob in new_blobs]
            frame = pd.DataFrame(pipeline.vectors(pipeline.prepare(images)), columns=columns)
            frame["image.width"], frame["image.height"] = 96, 96
            frame["image.brightness"] = rng.normal(0.3, 0.02, len(frame))
            frame["image.format"] = "PNG"
            return frame

        cur, t_current = timed(current)
        kinds = {c: "numerical" for c in reference.columns if c != "image.format"} | {"image.format": "categorical"}
        drift, t_drift = timed(partial(drift_table, reference, cur, kinds))
        _, t_ood = timed(partial(ood, ref_X, cur[columns].to_numpy()))
        proba = model.predict_proba((cur[columns].to_numpy() - mean) / std)
        perf = partial(compare_with_dummies, labels[ref_y], labels[new_y], proba, list(labels), positive="tumour")
        _, t_perf = timed(partial(perf, n_boot=200))
        with tempfile.TemporaryDirectory() as tmp:
            html = partial(drift_report_html, reference, cur, DriftResult(drift.columns), Path(tmp) / "r.html")
            _, t_html = timed(html)
        total = t_current + t_drift + t_ood + t_perf + t_html
        rows.append((n, t_current, t_drift, t_ood, t_perf, t_html, total, total - t_drift))

    base = rows[0][7]
    print(
        f"{'reference':>10} {'current':>8} {'drift':>7} {'ood':>6} {'perf':>6} {'html':>6} {'total':>7} "
        f"{'total-drift':>11} {'ratio':>6}"
    )
    for n, tc, td, to, tp, th, total, rest in rows:
        print(
            f"{n:>10,} {tc:8.2f} {td:7.2f} {to:6.2f} {tp:6.2f} {th:6.2f} {total:7.2f} {rest:11.2f} {rest / base:6.2f}"
        )
    print("ratio: (total - drift) against the 250-image reference; seconds otherwise")

    big_ref = pd.DataFrame(rng.normal(size=(10_000, 200)), columns=[f"c{i}" for i in range(200)])
    big_cur = pd.DataFrame(rng.normal(size=(10_000, 200)), columns=big_ref.columns)
    big_cur["c0"] += 1.0
    result, seconds = timed(lambda: drift_table(big_ref, big_cur, dict.fromkeys(big_ref.columns, "numerical")))
    print(
        f"drift check 10,000 x 200 (reference and current): {seconds:.2f} s, {result.columns[0].method}, "
        f"drifted {result.drifted_columns}"
    )


if __name__ == "__main__":
    main()
