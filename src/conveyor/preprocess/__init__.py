"""Stateless preprocessing: grayscale, trim black borders, resize, normalise."""

from conveyor.preprocess.transforms import (
    Preprocessor,
    normalise_minmax,
    normalise_percentile,
    resize,
    to_gray_unit,
    trim_borders,
)

__all__ = [
    "Preprocessor",
    "normalise_minmax",
    "normalise_percentile",
    "resize",
    "to_gray_unit",
    "trim_borders",
]
