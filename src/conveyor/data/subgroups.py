"""The subgroups an image belongs to: derived values only, so that training and monitoring can report each group's
metrics (:mod:`conveyor.training.subgroups`) without the workspace keeping anything that names a patient.

Three sources, merged into one small ``{attribute: value}`` dict per stored image (``images.subgroups``):

* the DICOM header: ``manufacturer``, ``model`` (ManufacturerModelName), ``modality``, ``sex`` (PatientSex M/F/O),
  ``age_band`` (a decade from PatientAge: ``"045Y"`` is ``40-49``; ``90+`` above 89, as HIPAA's safe harbour
  aggregates them), ``body_part`` (BodyPartExamined) and ``institution`` (InstitutionName: a site, not a patient);
  never PatientName, PatientID, a date of birth or any other identifier;
* the image's facts: ``format``, ``bit_depth`` and ``size`` (a band of its shorter side);
* every extra column of a labels CSV (beyond path, label, split, group), unless its name looks like an identifier
  (:func:`identifying_column`): such a column is dropped, never stored, and the ingest summary names it.

Every value is a string, trimmed, whitespace collapsed and cut to :data:`MAX_CHARS` characters; an empty one is left
out. A labels CSV's column wins over a header value of the same name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DICOM_ATTRIBUTES",
    "MAX_CHARS",
    "age_band",
    "bounded",
    "csv_subgroups",
    "dicom_subgroups",
    "identifying_column",
    "image_subgroups",
    "size_band",
]

MAX_CHARS = 64
"""The longest value (and column name) stored: a group is a category, not a note."""

DICOM_ATTRIBUTES = {
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "modality": "Modality",
    "sex": "PatientSex",
    "age_band": "PatientAge",
    "body_part": "BodyPartExamined",
    "institution": "InstitutionName",
}
"""Each subgroup attribute read from a DICOM header, and the element it is derived from."""

_SIZE_BANDS = ((256, "<256"), (512, "256-511"), (1024, "512-1023"))

# Words that make a column name an identifier: patient and person names and IDs, record and accession numbers,
# contact details, and dates (a date of birth, of a study: HIPAA counts every date as identifying).
_IDENTIFYING_WORDS = frozenset(
    {"id", "ids", "uid", "mrn", "ssn", "nhs", "dob", "patient", "subject", "accession", "address", "phone", "email",
     "mail", "initials", "zip", "postcode"}
)  # fmt: skip
_IDENTIFYING_PARTS = ("name", "birth", "date", "patientid", "subjectid", "identifier")

_AGE = re.compile(r"(\d{1,3})([DWMY])")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def bounded(value: Any) -> str | None:
    """``value`` as a stored group value: a string, trimmed, inner whitespace collapsed, at most :data:`MAX_CHARS`
    characters; None when nothing is left."""
    text = " ".join(str(value).split())[:MAX_CHARS].strip()
    return text or None


def identifying_column(name: str) -> bool:
    """Whether a labels CSV column's name says it holds an identifier (``patient_id``, ``Name``, ``birth_date``,
    ``MRN``, ``PatientID``): such a column is never stored."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)  # PatientID -> Patient ID
    words = set(re.split(r"[^a-z0-9]+", spaced.lower())) - {""}
    squashed = re.sub(r"[^a-z0-9]+", "", name.lower())
    return bool(words & _IDENTIFYING_WORDS) or any(part in squashed for part in _IDENTIFYING_PARTS)


def age_band(value: Any) -> str | None:
    """The decade band of a DICOM age string (``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``; 1 to 3 digits taken):
    ``"045Y"`` is ``"40-49"``, ``"011M"`` is ``"0-9"``, 90 years and over is ``"90+"``; None for anything else (a
    bare number has no unit)."""
    found = _AGE.fullmatch(str(value or "").strip().upper())
    if found is None:
        return None
    years = int(found.group(1)) * _DAYS_PER_UNIT[found.group(2)] / 365.25
    decade = int(years // 10) * 10
    return "90+" if decade >= 90 else f"{decade}-{decade + 9}"


def size_band(width: int, height: int) -> str:
    """The band of an image's shorter side: ``<256``, ``256-511``, ``512-1023`` or ``>=1024``."""
    side = min(width, height)
    for limit, band in _SIZE_BANDS:
        if side < limit:
            return band
    return ">=1024"


def dicom_subgroups(ds: Any) -> dict[str, str]:
    """The subgroup values of a parsed DICOM data set (see :data:`DICOM_ATTRIBUTES`); an element that is missing,
    empty or cannot be read is left out. Reads only those elements: no identifier ever passes through here."""
    out: dict[str, str] = {}
    for attribute, keyword in DICOM_ATTRIBUTES.items():
        try:
            raw = ds.get(keyword, None)
        except Exception:  # pydicom raises anything on a hostile element: it is then unknown
            continue
        if raw is None:
            continue
        if attribute == "age_band":
            value = age_band(raw)
        elif attribute == "sex":
            value = str(raw).strip().upper()
            value = value if value in ("M", "F", "O") else None
        else:
            value = bounded(raw)
        if value is not None:
            out[attribute] = value
    return out


def image_subgroups(fmt: str, bit_depth: int, width: int, height: int) -> dict[str, str]:
    """The subgroup values every image has: its format, bit depth and size band."""
    return {"format": fmt, "bit_depth": str(bit_depth), "size": size_band(width, height)}


def csv_subgroups(extra: Mapping[str, str]) -> dict[str, str]:
    """A labels CSV row's extra columns as subgroup values: names and values bounded, empty values left out. The
    caller has already dropped identifying columns (:func:`identifying_column`)."""
    out: dict[str, str] = {}
    for name, raw in extra.items():
        key, value = bounded(name), bounded(raw)
        if key is not None and value is not None:
            out[key] = value
    return out
