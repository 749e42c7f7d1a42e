"""Errors the CLI turns into a clear message and exit code 2 (bad input), with file, line and field."""

from __future__ import annotations

import difflib
import errno
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


class OutputError(InputError):
    """A file or folder the harness cannot write (a full disk, a read-only folder, a path through a regular file,
    no home directory): the CLI prints it as one line naming the path and what to do, and exits 2."""


# what to do, by errno: the OS's own words ("No space left on device") say what, not what next
_REMEDIES = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another folder",
    errno.EFBIG: "the file is over this process's size limit (ulimit -f) or the file system's: raise it or "
                 "write to another folder",
    errno.EACCES: "write to a folder you may write to, or change its permissions",
    errno.EPERM: "write to a folder you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.ENOENT: "its folder does not exist: create it or choose another path",
    errno.EISDIR: "it is a folder: name a file",
    errno.EEXIST: "it exists and is not a folder: choose another path",
}


def output_error(exc: OSError, path: object, doing: str = "cannot write", field: str | None = None) -> OutputError:
    """The OutputError for `exc` raised while writing `path`: "PATH: cannot write (No space left on device): the
    disk is full: free some space or write to another folder"."""
    remedy = _REMEDIES.get(exc.errno, "write to another folder")
    return OutputError(f"{doing} ({exc.strerror or exc}): {remedy}", path=str(path), field=field)


def suggestion(name: object, known: Iterable[str], listing: str = "known") -> str:
    """"; did you mean 'X'?" for the closest of `known` to a wrong `name`, else "; known: a, b" (or "none")."""
    known = list(known)
    hint = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean '{hint[0]}'?" if hint else f"; {listing}: {', '.join(known) or 'none'}"
