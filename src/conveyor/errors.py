"""The errors conveyor raises on purpose.

Domain code raises these with a message that names the file, the field and what was expected. Only the server maps
them to HTTP status codes; the CLI prints the message and exits non-zero.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConveyorError", "InvalidImageError", "NotFoundError", "SourceError"]


class ConveyorError(Exception):
    """Base of every error conveyor raises deliberately."""


class ConfigError(ConveyorError):
    """A setting is missing or has a value conveyor cannot use."""


class NotFoundError(ConveyorError):
    """A named thing (image, dataset version, model) does not exist."""


class SourceError(ConveyorError):
    """An ingest source (folder, zip, labels CSV) cannot be read as a whole."""


class InvalidImageError(ConveyorError):
    """One input file is not a usable image.

    Attributes:
        reason: a short stable code (``truncated``, ``too_many_pixels``...), the key of the quarantine counts.
        detail: what is wrong, for a person.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[InvalidImageError], tuple[str, str]]:  # crosses process boundaries intact
        return (type(self), (self.reason, self.detail))
