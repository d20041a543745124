"""The model spec: a typed contract between training, the registered model, serving and monitoring."""

from __future__ import annotations

import json

import pytest

from conveyor.tracking.pyfunc import ModelSpec

SPEC = ModelSpec(
    input_kind="features",
    preprocess={"size": [64, 64], "grayscale": True},
    extractors=[("intensity", {"bins": 32})],
    classes=["no_tumour", "tumour"],
    positive="tumour",
    family="logreg",
    extractor="intensity",
    dataset_version="abc123",
)


def test_the_spec_survives_its_json() -> None:
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC


def test_the_json_is_the_documented_document() -> None:
    assert json.loads(SPEC.to_json())["extractors"] == [["intensity", {"bins": 32}]]


def test_a_spec_with_a_missing_or_unknown_field_is_refused() -> None:
    data = json.loads(SPEC.to_json())
    del data["positive"]
    data["colour"] = "red"
    with pytest.raises(ValueError, match=r"fields \['colour', 'positive'\] missing or unknown"):
        ModelSpec.from_json(json.dumps(data))


def test_a_spec_with_an_unknown_input_kind_is_refused() -> None:
    data = {**json.loads(SPEC.to_json()), "input_kind": "pixels"}
    with pytest.raises(ValueError, match=r"input_kind 'pixels' is not one of \['features', 'image', 'both'\]"):
        ModelSpec.from_json(json.dumps(data))


def test_a_spec_saved_before_regions_existed_computes_on_the_whole_image() -> None:
    data = json.loads(SPEC.to_json())
    del data["roi"]
    loaded = ModelSpec.from_json(json.dumps(data))
    assert (loaded.roi, loaded.region_key) == (None, None)


def test_a_region_spec_names_its_key() -> None:
    from dataclasses import replace

    spec = replace(SPEC, roi={"key": "0123456789ab", "size": [64, 64]})
    assert ModelSpec.from_json(spec.to_json()).region_key == "0123456789ab"
