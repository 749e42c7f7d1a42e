"""The output folder of a run: claimed by one run at a time, never silently replaced, resumed only by its own suite.

`harness run --out DIR` refuses a DIR that already holds a results.json unless `--resume` is given (a finished
measurement is never replaced); two runs into one DIR at once are refused by an exclusive lock (`fcntl.flock` on
DIR/.harness.lock, held for the run's life and released by the kernel when the process ends, even by SIGKILL);
the default folder, reports/<time>-<suite>, gets a -2, -3... suffix when two runs start in the same second.
`--resume` takes a folder only from the suite that wrote it, on the machine that wrote it (`check_resume`), and
measures again every case whose definition or code changed since (`case_fingerprint`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, output_error
from harness.core.results import check_out_dir, ensure_dir

LOCK_NAME = ".harness.lock"


class OutLock:
    """The exclusive claim of one run on its output folder; `release` (or the process's end) lets it go."""

    def __init__(self, out: Path, fd: int):
        self.out, self.fd = out, fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def default_out(suite_name: str, root: Path = Path("reports")) -> Path:
    """A new folder reports/<time>-<suite>, made now: `-2`, `-3`, ... when a run started in the same second
    already made that one (mkdir is atomic, so two runs never share it)."""
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{safe_name(suite_name)}"
    ensure_dir(root, "--out")
    for n in range(1, 1000):
        out = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
        except OSError as exc:
            raise output_error(exc, out, "cannot make the output folder", "--out") from None
    raise InputError(f"{root}: no free folder name for {stamp}; choose one with --out", field="--out")


def safe_name(name: str) -> str:
    """A suite name as part of a folder name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def claim(out: Path, resume: bool) -> OutLock:
    """Make `out` and lock it for this run; refuse (InputError, exit 2) a folder another run holds, and, without
    `resume`, one that already holds a results file."""
    check_out_dir(out)  # made, and a probe written: OutputError (exit 2) naming it and the cause otherwise
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise output_error(exc, out / LOCK_NAME, "cannot write", "--out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise InputError(f"{out} is in use by another harness run{holder}; wait for it to finish, or choose "
                         "another --out", field="--out") from None
    holder = json.dumps({"pid": os.getpid(), "started": dt.datetime.now().isoformat(timespec="seconds")}).encode()
    try:  # who holds it, for the message a second run gets; the lock itself is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder, 0)
    except OSError:
        pass
    lock = OutLock(out, fd)
    results = out / "results.json"
    if not resume and results.exists():
        lock.release()
        raise InputError(f"{results} holds an earlier run{_describe(results)}; a run never replaces one: finish "
                         "it with --resume, or choose another --out (or delete that folder yourself)",
                         field="--out")
    if resume and not results.exists():
        lock.release()
        raise InputError(f"nothing to resume: {results} does not exist", field="--resume")
    return lock


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {holder['pid']}, started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _describe(results: Path) -> str:
    try:
        data = json.loads(results.read_text())
        suite = (data.get("suite") or {}).get("name")
        return (f" (suite '{suite}', {len(data.get('cases') or [])} cases, {data.get('status')}, "
                f"started {data.get('started')})")
    except (OSError, ValueError, AttributeError, TypeError):
        return ""


def machine_of(env: dict[str, Any]) -> dict[str, Any]:
    """What must be the same for two processes' figures to belong in one run: host, device and its model, torch,
    threads."""
    gpus = [d.get("name") for d in (env.get("cuda") or {}).get("devices") or []]
    return {"hostname": env.get("hostname"), "device": env.get("device"), "torch": env.get("torch"),
            "cpu": (env.get("cpu") or {}).get("model"), "gpus": gpus,
            "threads": (env.get("threads") or {}).get("torch_num_threads")}


def check_resume(stored: dict[str, Any], suite, env: dict[str, Any], out: Path) -> None:
    """Refuse (InputError) to resume `stored` (the folder's results) with another suite, on another machine or
    with other measure settings than those that wrote it: its figures would be merged with figures measured
    differently. A changed case is not refused here: `case_fingerprint` has it measured again."""
    was = stored.get("suite") or {}
    where = f"{out / 'results.json'}"
    if was.get("name") != suite.name or _same_path(was.get("path"), suite.path) is False:
        raise InputError(f"{where} holds a run of suite '{was.get('name')}' ({was.get('path')}), not of "
                         f"'{suite.name}' ({suite.path}); resume it with that suite, or choose another --out",
                         field="--resume")
    old, new = machine_of(stored.get("environment") or {}), machine_of(env)
    differ = [f"{k} {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]]
    if differ:
        hint = f" (resume with --threads {old['threads']})" if differ[0].startswith("threads") else ""
        raise InputError(f"{where} was measured on another machine or set-up ({', '.join(differ)}); a run's figures "
                         f"come from one{hint}: choose another --out", field="--resume")
    changed = measure_changes(was.get("measure") or {}, suite.measure)
    if changed:
        raise InputError(f"{where} was measured with other measure settings ({changed}); a resumed run measures "
                         "as the run did: restore them, or choose another --out", field="--resume")


RESUMABLE_MEASURE = ("repeat", "until_conclusive")  # what a resume may change: how many processes, not how each is


def measure_changes(stored: dict[str, Any], measure) -> str:
    """'field old -> new, ...' for the measure settings that differ, apart from RESUMABLE_MEASURE."""
    import dataclasses

    now = dataclasses.asdict(measure)
    return ", ".join(f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items()
                     if k not in RESUMABLE_MEASURE and k in stored and stored[k] != v)


def _same_path(a: str | None, b: str | None) -> bool | None:
    if not a or not b:
        return None
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def case_fingerprint(record: dict[str, Any], registry=None, workload_type: str | None = None) -> str:
    """A digest of what a case measures: its definition (workload spec, plugins and parameters, baseline, process
    count: `record` is runner.case_record) and the source of the workload and plugin modules it runs. A resume
    measures again a case whose fingerprint changed."""
    digest = hashlib.sha256(json.dumps({k: record.get(k) for k in ("workload", "plugins", "baseline_plugins",
                                                                    "kind", "alone", "processes")},
                                       sort_keys=True, default=str).encode())
    for source in _sources(record, registry, workload_type):
        digest.update(source)
    return digest.hexdigest()[:16]


def _sources(record: dict[str, Any], registry, workload_type: str | None) -> list[bytes]:
    if registry is None:
        return []
    classes = [registry.workloads.get(workload_type)] if workload_type else []
    classes += [registry.optimizations.get(p["name"]) for p in record.get("plugins", []) + record.get(
        "baseline_plugins", [])]
    files = set()
    for cls in classes:
        name = getattr(sys.modules.get(getattr(cls, "__module__", "")), "__file__", None)
        if name:  # a package's every module: a workload's run code lives beside its __init__
            files.update(Path(name).parent.glob("*.py") if Path(name).name == "__init__.py" else [Path(name)])
    out = []
    for path in sorted(files):
        try:
            out.append(path.read_bytes())
        except OSError:
            out.append(str(path).encode())
    return out


def refuse_results_overwrite(path: Path | None, field: str = "-o", inputs: list[Path] | tuple = ()) -> None:
    """Refuse (InputError) to write a report, comparison or export over a measurement: one of the command's
    inputs, a harness results file (its schema_version in the first or last 64 KiB: json.dumps writes it
    first, a key-sorting editor near the end), or a run's own file (a case's job, result or processes file, any
    JSON in a run's folder). A derived file can be made again; a measurement cannot."""
    if path is None:
        return
    target = os.path.realpath(path)
    if any(os.path.realpath(p) == target for p in inputs):
        raise InputError(f"{path} is one of this command's inputs; writing there would replace it: choose another "
                         "output path", field=field)
    target = Path(target)
    if not target.is_file():
        return
    in_run = target.suffix == ".json" and any((d / LOCK_NAME).exists() for d in (target.parent, target.parent.parent))
    if in_run or target.name.endswith((".processes.json", ".result.json", ".job.json")) or _holds_results(target):
        raise InputError(f"{path} holds a measurement (a harness results file or a run's own file); writing there "
                         "would replace it: choose another output path", field=field)


def _holds_results(path: Path, window: int = 65536) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(window)
            f.seek(max(0, path.stat().st_size - window))
            tail = f.read(window)
    except OSError:
        return False
    return b'"schema_version"' in head or b'"schema_version"' in tail
