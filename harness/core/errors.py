"""Errors the CLI turns into a clear message and exit code 2 (bad input), with file, line and field."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(Exception):
    """Bad input from the user: a suite, a results file, a flag. Printed as ``path:line: field: message``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message, self.path, self.line, self.field = message, path, line, field

    def __str__(self) -> str:
        where = ":".join(str(x) for x in (self.path, self.line) if x is not None)
        parts = [p for p in (where, self.field, self.message) if p]
        return ": ".join(parts)


def suggestion(name: object, known: Iterable[str], listing: str = "known") -> str:
    """"; did you mean 'X'?" for the closest of `known` to a wrong `name`, else "; known: a, b" (or "none")."""
    known = list(known)
    hint = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean '{hint[0]}'?" if hint else f"; {listing}: {', '.join(known) or 'none'}"
