"""The results file on disk: its schema version, the one reader and the one atomic writer (docs/results.md).

Every file the harness writes goes through `write_text` (a temporary file in the same folder, then a rename, so
a reader never sees half a file; mode 0666 less the umask, as `open` makes files) and every JSON file through
`write_json` (standard JSON: a non-finite number becomes null, with a warning naming it). A file or folder that
cannot be written is an OutputError naming it and what to do (exit 2), and `check_out_dir` finds that before a run
starts. Every results file is read through `load`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from harness.core import results_schema
from harness.core.errors import InputError, output_error

SCHEMA_VERSION = 2  # 2: a case's optimized side is "optimized" (1 called it "metrics"); `validate` reads both


def finite(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """`data` with every non-finite float (NaN, +-inf) replaced by None, and the paths of those replaced: strict
    JSON parsers (a browser's JSON.parse, node) reject the bare NaN that Python's json writes by default."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where or "value"]
    if isinstance(data, dict):
        pairs = [(k, finite(v, f"{where}.{k}" if where else str(k))) for k, v in data.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(data, (list, tuple)):
        items = [finite(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return data, []


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (`write_bytes`), UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, then a rename; how results,
    reports, exports and the reference cache are written (no reader ever sees half a file). The file's mode is
    what `open` gives a new file (0666 less the umask). OutputError naming `path` and what to do when it cannot
    be written: a full disk, a read-only or missing folder, a path through a regular file. A symbolic link is
    followed (its target is written, the link kept); a target that is not a regular file (/dev/stdout, a FIFO,
    a device) is written into directly, not replaced by one."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        return _write_special(path, data)
    try:
        fd, tmp = _new_temp(path)
    except OSError as exc:
        raise output_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(exc, path) from exc
        raise


def _write_special(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise output_error(exc, path) from exc


def _new_temp(path: Path) -> tuple[int, Path]:
    """A new empty file beside `path`, open for writing, with a random name (O_EXCL, as tempfile.mkstemp). Made
    with mode 0666, which the kernel narrows by the umask (and a default ACL) as for any `open`: mkstemp's 0600
    left results, reports and the cache unreadable to the group and a web server whatever the umask."""
    folder = path.parent.resolve()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def ensure_dir(path: str | Path, field: str | None = None) -> Path:
    """Make folder `path` (and its parents) if need be and check that a file can be written in it (4 KiB: a full
    disk may still take an empty file), before anything is computed for it. OutputError naming the folder, why
    and what to do otherwise (`field`: the option that named it)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = _new_temp(path / ".write-check")
        try:
            with os.fdopen(fd, "wb") as f:  # its write loops until all is written or an error says why not
                f.write(bytes(4096))
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(exc, path, "cannot write to this folder", field) from exc
    return path


def check_out_dir(path: str | Path) -> Path:
    """`ensure_dir` for `harness run --out`: call it before any case runs, so that a read-only, full or
    impossible output folder is one line and exit 2, not a traceback after the first measurement."""
    return ensure_dir(path, "--out")


def write_json(path: str | Path, data: Any) -> None:
    """Write standard JSON atomically (`write_text`); non-finite numbers are written as null (`finite`), and a
    dict with a "warnings" list gets a warning naming them."""
    data, bad = finite(data)
    if bad and isinstance(data, dict) and isinstance(data.get("warnings"), list):
        data["warnings"].append(f"not finite, written as null: {', '.join(bad[:8])}"
                                + (f" and {len(bad) - 8} more" if len(bad) > 8 else ""))
    write_text(path, json.dumps(data, indent=1, default=str, allow_nan=False))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; InputError for a missing or malformed file."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", path=str(path), line=e.lineno) from None


def validate(data: Any, path: str | Path | None = None) -> dict[str, Any]:
    """Check that `data` is a harness results file this harness can read (schema_version 1 up to
    SCHEMA_VERSION; a newer one asks for a newer harness) whose every field a reader uses has the type and range
    it needs (`harness.core.results_schema.check`: finite positive times, lists, unique case ids), and return it in
    the current schema (`upgrade`; the input is not changed); raise InputError naming the file and the field
    (``cases[2].baseline.latency.median: expected a time in seconds (> 0...), got "abc"``). Every reader of a
    results file (report, export, compare, replicate, --resume) goes through here."""
    where = None if path is None else str(path)
    if not isinstance(data, dict) or "cases" not in data or "schema_version" not in data:
        raise InputError("not a harness results file (no schema_version/cases)", path=where)
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"unsupported schema_version {version!r}", path=where, field="schema_version")
    if version > SCHEMA_VERSION:
        raise InputError(f"schema_version {version} is newer than this harness reads ({SCHEMA_VERSION}); "
                         "upgrade harness", path=where, field="schema_version")
    if not isinstance(data["cases"], list):
        raise InputError("cases must be a list", path=where, field="cases")
    data = upgrade(data)
    try:
        results_schema.check(data)
    except InputError as exc:
        exc.path = where
        raise
    return data


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A results dict of any readable schema in the current one (a copy where anything changes): schema 1's
    side key "metrics" becomes "optimized" in each case and in its measurement's per-side fields."""
    if data["schema_version"] >= 2:
        return data
    return {**data, "schema_version": SCHEMA_VERSION, "read_from_schema": data["schema_version"],
            "cases": [_renamed(c) if isinstance(c, dict) else c for c in data["cases"]]}


def _renamed(case: dict[str, Any]) -> dict[str, Any]:
    case = {("optimized" if k == "metrics" else k): v for k, v in case.items()}
    measurement = case.get("measurement")
    if isinstance(measurement, dict):
        case["measurement"] = {k: ({("optimized" if s == "metrics" else s): x for s, x in v.items()}
                                   if isinstance(v, dict) and "metrics" in v and "baseline" in v else v)
                               for k, v in measurement.items()}
    return case


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a results file (`read_json`, then `validate`)."""
    return validate(read_json(path), path)
