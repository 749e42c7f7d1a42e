"""Runs a suite: one fresh process per case (torchrun when it needs several), a timeout per case, results
written atomically after every case, resume, Ctrl-C that keeps what was measured."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import __version__, capacity, searches, serving, stats
from harness.formatting import fmt_headline
from harness.results import SCHEMA_VERSION, load, write_json
from harness.suite import CaseSpec, Suite

EXIT_GRACE_S = 30.0  # seconds a worker may take to exit after writing its result


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_results(suite: Suite, env: dict[str, Any], run_id: str,
                plugins_dirs: list[str] | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "harness_version": __version__,
            "started": now(), "finished": None, "status": "running",
            "suite": {"name": suite.name, "path": suite.path, "description": suite.description,
                      "device": suite.device, "measure": dataclasses.asdict(suite.measure),
                      "plugins_dirs": [str(d) for d in plugins_dirs or []], "overrides": suite.overrides},
            "environment": env, "cases": []}


def run_command(results: dict[str, Any], *flags: str) -> str:
    """The `harness run` command line that runs this results file's suite again with `flags` (and the
    --plugins-dir folders and the --model / --budget-gb it was run with): what the harness prints as advice,
    ready to paste."""
    suite = results.get("suite") or {}
    dirs = [f"--plugins-dir {shlex.quote(d)}" for d in suite.get("plugins_dirs") or []]
    overrides = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in (suite.get("overrides") or {}).items()]
    return " ".join(["harness", *dirs, "run", shlex.quote(str(suite.get("path") or suite.get("name"))), *overrides,
                     *flags])


def case_record(case: CaseSpec) -> dict[str, Any]:
    """The part of a case's results that is known before running it."""
    return {"id": case.id, "workload": {"name": case.workload, "type": case.workload_type,
                                        "spec": case.workload_spec},
            "kind": case.kind, "plugins": [dataclasses.asdict(p) for p in case.plugins], "alone": case.alone,
            "baseline_plugins": [dataclasses.asdict(p) for p in case.baseline], "note": case.note,
            "processes": case.processes}


def worker_command(case: CaseSpec, job_path: Path, result_path: Path) -> list[str]:
    """`python -m harness.worker`, under torchrun when the case needs several processes."""
    if case.processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={case.processes}",
                "-m", "harness.worker", str(job_path), str(result_path)]
    return [sys.executable, "-m", "harness.worker", str(job_path), str(result_path)]


def job_for(case: CaseSpec, suite: Suite, env: dict[str, Any], threads: int, plugins_dirs: list[str],
            probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job file a worker runs (`python -m harness.worker JOB RESULT`, under torchrun on any number of nodes)."""
    return {"case": dataclasses.asdict(case), "env": env, "threads": threads,
            "measure": dataclasses.asdict(suite.measure), "plugins_dirs": plugins_dirs, "seed": 0,
            "runner_pid": os.getpid(), "probe": probe}


def run_case(case: CaseSpec, suite: Suite, env: dict[str, Any], threads: int, workdir: Path,
             plugins_dirs: list[str], inline: bool = False, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one case in a fresh process (or in this one with `inline`) and return its result record; with
    `probe`, one probe of one side instead: {side, value, budget_bytes} for a capacity search
    (harness.capacity), {kind: "serve", side, value, serves} for a serving search (harness.serving)."""
    record = case_record(case)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.id)[:120]
    if probe:
        safe += f".{probe.get('kind', 'capacity')}-{probe['side']}-{probe['value']}"
    job_path, result_path, log_path = (workdir / f"{safe}.{ext}" for ext in ("job.json", "result.json", "log"))
    timeout = case.timeout_s or suite.measure.timeout_s
    write_json(str(job_path), job_for(case, suite, env, threads, plugins_dirs, probe))
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    status = None
    if inline and case.processes > 1:
        record.update(status="failed",
                      error=f"needs {case.processes} processes under torchrun; run it without --inline")
        return record
    if inline:
        from harness import worker

        worker.main([str(job_path), str(result_path)])
    else:
        status = _launch(worker_command(case, job_path, result_path), log_path, timeout, result_path)
    record["duration_s"] = time.perf_counter() - start
    record["log"] = str(log_path) if not inline else None
    if result_path.exists():
        record.update(json.loads(result_path.read_text()))
        if status == "hung at exit":
            record.setdefault("warnings", []).append(
                f"the case's processes had not exited {EXIT_GRACE_S:g} s after writing the result; killed, result kept")
    elif status == "timeout":
        record.update(status="timeout", error=f"no result after the {timeout:g} s timeout; process killed")
    elif status and status.startswith("signal"):
        reason = " (the kernel's OOM killer sends SIGKILL)" if status == "signal SIGKILL" else ""
        record.update(status="crashed", error=f"worker killed by {status[7:]}{reason}{_tail(log_path)}")
    else:
        record.update(status="crashed", error=f"worker exited with {status} and wrote no result{_tail(log_path)}")
    return record


def _launch(command: list[str], log_path: Path, timeout: float, result_path: Path) -> str:
    """Start the worker in its own process group; kill the group on timeout or Ctrl-C, or when it has not exited
    EXIT_GRACE_S after writing its result (a gloo process group that hangs in shutdown). Returns "exit N",
    "signal NAME", "timeout" or "hung at exit"."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        done, hung = threading.Event(), threading.Event()
        watcher = threading.Thread(target=_watch_exit, args=(proc, result_path, done, hung), daemon=True)
        watcher.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return "timeout"
        except KeyboardInterrupt:
            _kill_group(proc)
            raise
        finally:
            done.set()
    if hung.is_set():
        return "hung at exit"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit {code}"


def _watch_exit(proc: subprocess.Popen, result_path: Path, done: threading.Event, hung: threading.Event) -> None:
    """Kill the worker's process group if it is still running EXIT_GRACE_S after its result file appeared."""
    written = None
    while not done.wait(0.5):
        if written is None and result_path.exists():
            written = time.monotonic()
        if written is not None and time.monotonic() - written > EXIT_GRACE_S:
            hung.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(log_path: Path, lines: int = 8) -> str:
    try:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last output:\n" + "\n".join(tail)) if tail else ""


def references_needed(suite: Suite) -> list[str]:
    """Names of trained reference models ("reference:NAME") that the suite's workloads or plugins use."""
    names = set()
    for case in suite.cases:
        values = list(case.workload_spec.values())
        values += [v for use in case.plugins + case.baseline for v in use.params.values()]
        names.update(v.split(":", 1)[1] for v in values if isinstance(v, str) and v.startswith("reference:"))
    return sorted(names)


def prepare_references(suite: Suite, device: str, progress: Callable[[str], None]) -> None:
    """Train (or find cached) the reference models a suite needs before any case starts, so their training
    shows as progress here and is not charged to a case's timeout."""
    names = references_needed(suite)
    if not names:
        return
    from harness.reference import load_reference

    for name in names:
        progress(f"reference model '{name}': loading, or training it on first use (cached afterwards)")
        load_reference(name, device, progress)


def run_suite(suite: Suite, env: dict[str, Any], out_dir: Path, *, threads: int, plugins_dirs: list[str],
              inline: bool = False, resume: bool = False, only: list[str] | None = None,
              progress: Callable[[str], None] = print, registry=None, repeat: int = 1) -> dict[str, Any]:
    """Run every case of `suite` and write out_dir/results.json after each; returns the results.

    `repeat`: run each case in that many fresh processes and combine them (`combine_repeats`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    workdir = out_dir / "cases"
    workdir.mkdir(exist_ok=True)
    if resume and results_path.exists():
        results = load(results_path)
        results["status"] = "running"
    else:
        results = new_results(suite, env, out_dir.name, plugins_dirs)
    wants = {c.id: [k for k in ("serving", "capacity") if getattr(c, k)] for c in suite.cases}
    done = {c["id"] for c in results["cases"] if c.get("status") not in ("interrupted",)
            and not (c.get("status") == "ok" and any(k not in c for k in wants.get(c["id"], [])))}  # search cut short
    results["cases"] = [c for c in results["cases"] if c["id"] in done]
    cases = [c for c in suite.cases if not only or any(p.name in only for p in c.plugins)]
    todo = [c for c in cases if c.id not in done]
    if done and resume:
        progress(f"resuming: {len(cases) - len(todo)} of {len(cases)} cases already done")
    started, durations = time.perf_counter(), []

    def probe_case(at: CaseSpec, probe: dict[str, Any]) -> dict[str, Any]:
        return run_case(at, suite, env, threads, workdir, plugins_dirs, inline, probe=probe)

    try:
        for i, case in enumerate(todo):
            eta = f", about {_fmt(sum(durations) / len(durations) * (len(todo) - i))} left" if durations else ""
            progress(f"[{i + 1}/{len(todo)}] {case.id}{eta}")
            t0 = time.perf_counter()
            records = []
            for k in range(repeat):
                records.append(run_case(case, suite, env, threads, workdir, plugins_dirs, inline))
                if repeat > 1:
                    progress(f"    process {k + 1}/{repeat}: {one_line(records[-1])}")
                if records[-1]["status"] != "ok":
                    break
            record = combine_repeats(records, suite.measure.min_effect) if repeat > 1 else records[0]
            results["cases"].append(record)  # kept even if a search below is interrupted
            write_json(str(results_path), results)
            progress("    " + one_line(record))
            figures = fmt_headline(record) if record["status"] == "ok" else ""
            if figures:  # TTFT, TPOT, goodput...: what the time verdict alone hides
                progress("    " + figures)
            if case.serving and record["status"] == "ok":
                slo = ", ".join(f"{k} <= {v:g} s" for k, v in case.serving["slo"].items())
                progress(f"    serving: the highest rate within the SLO ({slo}), each side")
                record["serving"] = searches.run_serving(case, probe_case)
                progress("    " + serving.headline(record["serving"]))
            if case.capacity and record["status"] == "ok":
                progress(f"    capacity: the largest {case.capacity['dim']} within "
                         f"{case.capacity['budget_gb']:g} GiB, each side")
                record["capacity"] = searches.run_capacity(case, probe_case)
                progress("    " + capacity.headline(record["capacity"]))
            durations.append(time.perf_counter() - t0)
            write_json(str(results_path), results)
            if registry is not None:
                registry.manager.hook.harness_case_finished(case=record)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        write_json(str(results_path), results)
        progress(f"interrupted: {len(results['cases'])} cases kept in {results_path}; finish with: "
                 + run_command(results, "--out", shlex.quote(str(out_dir)), "--resume"))
        raise
    results["status"], results["finished"] = "complete", now()
    results["wall_s"] = time.perf_counter() - started
    write_json(str(results_path), results)
    return results


def combine_repeats(records: list[dict[str, Any]], min_effect: float) -> dict[str, Any]:
    """One record from a case run in several fresh processes (`harness run --repeat N`).

    Samples and blocks of each side are concatenated (latency statistics and throughput recomputed from them);
    the comparison is `stats.compare_groups` over each process's pair ratios, a two-level cluster bootstrap
    (processes, then pairs) that covers the process-to-process variation one run's interval leaves out. Any
    process that failed makes the case failed; a busy process withholds the verdict; a check failed in any
    process is a failed check."""
    bad = next((r for r in records if r["status"] != "ok"), None)
    if bad is not None:
        return {**bad, "error": f"process {records.index(bad) + 1} of the repeats: {bad.get('error')}"}
    out = json.loads(json.dumps(records[0]))
    for key in ("baseline", "optimized"):
        if not isinstance(out.get(key), dict):
            continue
        lat = out[key]["latency"]
        data = [x for r in records for x in r[key]["latency"]["data"]]
        blocks = [b for r in records for b in r[key]["latency"].get("blocks") or [len(r[key]["latency"]["data"])]]
        new = stats.summarize(data, lat.get("iterations", 1), blocks)
        out[key]["throughput"] = {u: v * lat["median"] / new["median"] for u, v in out[key]["throughput"].items()}
        out[key]["latency"] = new
    loads = [(r.get("measurement") or {}).get("foreign_load") or {} for r in records]
    busy = "; ".join(f"process {i + 1}: {ld['reason']}" for i, ld in enumerate(loads) if ld.get("busy")) or None
    if isinstance(out.get("baseline"), dict):
        groups = [r["comparison"].get("per_pair") or [] for r in records]
        comparison = stats.compare_groups(groups, min_effect, busy)
        comparison["per_pair"] = [x for g in groups for x in g]
        comparison["memory_ratio"] = out["comparison"].get("memory_ratio")
        out["comparison"] = comparison
    out["repeats"] = [{"speedup": r["comparison"].get("speedup"), "ci95": r["comparison"].get("ci95"),
                       "verdict": r["comparison"].get("verdict"), "pairs": r["comparison"].get("pairs"),
                       "foreign_cpu": ld.get("foreign_cpu"), "log": r.get("log")} for r, ld in zip(records, loads)]
    out["measurement"]["pairs"] = sum((r.get("measurement") or {}).get("pairs") or 0 for r in records)
    out["measurement"]["processes_repeated"] = len(records)
    out["measurement"]["foreign_load"] = max(loads, key=lambda ld: ld.get("foreign_cpu") or 0.0) or None
    names = {c["name"] for c in out.get("checks", [])}
    for i, r in enumerate(records[1:], start=2):
        out["checks"] += [{**c, "name": f"{c['name']} (process {i})"} for c in r.get("checks", [])
                          if not c["passed"] or c["name"] not in names]
    out["warnings"] = list(dict.fromkeys(w for r in records for w in r.get("warnings", [])))
    out["duration_s"] = sum(r.get("duration_s") or 0.0 for r in records)
    return out


def _fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def one_line(record: dict[str, Any]) -> str:
    """A case's verdict in one line, for the progress display."""
    if record["status"] != "ok":
        first = (record.get("error") or "").splitlines()[0][:160] if record.get("error") else ""
        return f"{record['status'].upper()}: {first}"
    c = record["comparison"]
    checks = record.get("checks", [])
    passed = sum(ch["passed"] for ch in checks)
    load = ((record.get("measurement") or {}).get("foreign_load") or {}).get("foreign_cpu")
    load_text = f", foreign CPU {load:.0%}" if load is not None else ""
    if record.get("alone"):
        lat = record["optimized"]["latency"]
        return (f"timed alone: median {lat['median'] * 1e3:.3g} ms, p90 {lat['p90'] * 1e3:.3g} ms over "
                f"{lat['rounds']} samples{load_text}")
    word = c["verdict"] + (f" ({c['reason']})" if c.get("reason") else "")
    figure = f"speedup {fmt_speedup(c)}" + (f" over {c['pairs']} pairs" if c.get("pairs") else "")
    return f"{word}: {figure}{load_text}, checks {passed}/{len(checks)} passed"


def fmt_speedup(comparison: dict[str, Any]) -> str:
    """'1.62x [1.55, 1.70]', or 'n/a' when nothing was compared."""
    s, ci = comparison.get("speedup"), comparison.get("ci95")
    if s is None:
        return "n/a"
    return f"{s:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
