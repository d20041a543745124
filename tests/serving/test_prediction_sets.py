"""Every answer carries its prediction set at serving.coverage and whether the model abstains (the champion was
trained with about six calibration images per class: see conftest)."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from conveyor.serving import create_app
from conveyor.tracking.integrity import load_verified
from tests.serving.conftest import png, settings_for


def _expected_set(home, probabilities: dict[str, float], coverage: float) -> list[str]:  # type: ignore[no-untyped-def]
    """The set by the textbook rule, from the champion's stored calibration scores (not through crepes): class c
    stays when (#{its calibration scores >= 1 - p_c} + 1) / (n_c + 1) >= 1 - coverage."""
    model = load_verified(settings_for(home), 1).unwrap_python_model()
    scores, labels = model.conformal.scores, model.conformal.labels
    kept = []
    for c, name in enumerate(model.classes):
        mine = scores[labels == c]
        p_value = (np.sum(mine >= 1.0 - probabilities[name]) + 1) / (len(mine) + 1)
        if p_value >= 1.0 - coverage:
            kept.append(name)
    return sorted(kept, key=lambda name: -probabilities[name])


def test_too_few_calibration_cases_to_rule_a_class_out_abstain(home) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_for(home, coverage=0.9))) as client:
        body = client.post("/v1/predict", files={"file": ("s.png", png(3, tumour=True), "image/png")}).json()
    assert sorted(body["prediction_set"]) == ["no_tumour", "tumour"]
    assert (body["coverage"], body["abstain"]) == (0.9, True)


def test_the_set_follows_the_conformal_rule_at_a_lower_coverage(home) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_for(home, coverage=0.7))) as client:
        answers = [
            client.post("/v1/predict", files={"file": ("s.png", png(seed, tumour=seed % 2 == 0), "image/png")}).json()
            for seed in range(8)
        ]
    for body in answers:
        assert body["prediction_set"] == _expected_set(home, body["probabilities"], 0.7)
        assert body["abstain"] == (len(body["prediction_set"]) != 1)
    assert any(len(body["prediction_set"]) == 1 for body in answers)


def test_each_answer_of_a_batch_has_its_set(home) -> None:  # type: ignore[no-untyped-def]
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]
    with TestClient(create_app(settings_for(home, coverage=0.7))) as client:
        items = client.post("/v1/predict/batch", files=files).json()["items"]
    for item in items:
        body = item["prediction"]
        assert body["prediction_set"] == _expected_set(home, body["probabilities"], 0.7)
