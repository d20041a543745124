"""Which HTTP status and reason code each error gets: shared by the app's handlers and the batch endpoint, which
reports each file's status as a single upload of it would have had."""

from __future__ import annotations

from conveyor.errors import InvalidImageError

__all__ = ["HTTP_REASONS", "STATUS_BY_REASON", "status_for"]

#: HTTP status of each InvalidImageError reason; any other reason is 422.
STATUS_BY_REASON = {
    "too_large": 413,
    "too_many_pixels": 413,
    "too_many_files": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
}


#: The reason code of an HTTP error the framework or a dependency raises.
HTTP_REASONS = {
    400: "malformed_body",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
}


def status_for(exc: InvalidImageError) -> int:
    return STATUS_BY_REASON.get(exc.reason, 422)
