"""Taking images in: sources, decoding, validation, deduplication, quarantine, splits, dataset versions.

The ingest stage itself is :func:`conveyor.data.ingest.ingest` (not re-exported here, so that the name
``conveyor.data.ingest`` stays the module).
"""

from conveyor.data.decode import FORMATS, REASONS, DecodedImage, DecodeLimits, decode_image, sniff_format
from conveyor.data.facts import inspect_image
from conveyor.data.ingest import IngestSummary
from conveyor.data.sources import Source, SourceFile, open_source
from conveyor.data.versions import dataset_members, latest_version, list_versions, record_dataset_version

__all__ = [
    "FORMATS",
    "REASONS",
    "DecodeLimits",
    "DecodedImage",
    "IngestSummary",
    "Source",
    "SourceFile",
    "dataset_members",
    "decode_image",
    "inspect_image",
    "latest_version",
    "list_versions",
    "open_source",
    "record_dataset_version",
    "sniff_format",
]
