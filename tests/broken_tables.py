"""A table module whose import fails: create_schema must report it, not skip it."""

import no_such_dependency  # noqa: F401
