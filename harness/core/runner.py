"""Runs a suite: each case in several short processes, one per round over the suite (harness.core.launch starts them),
a timeout per process, results written atomically after every process, resume, Ctrl-C that keeps what was
measured."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from harness import __version__
from harness.core import launch, stats
from harness.core.outdir import case_fingerprint
from harness.core.results import SCHEMA_VERSION, load, write_json
from harness.core.suite import CaseSpec, Suite, apply_overrides
from harness.report.formatting import fmt_headline, one_line, process_line

RUNNER_STARTED = psutil.Process().create_time()  # with the pid, how a case process knows its runner is alive


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
    given = {f.split()[0] for f in flags}
    overrides = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
                 for k, v in (suite.get("overrides") or {}).items() if f"--{k.replace('_', '-')}" not in given]
    return " ".join(["harness", *dirs, "run", shlex.quote(str(suite.get("path") or suite.get("name"))), *overrides,
                     *flags])


def case_record(case: CaseSpec) -> dict[str, Any]:
    """The part of a case's results that is known before running it."""
    return {"id": case.id, "workload": {"name": case.workload, "type": case.workload_type,
                                        "spec": case.workload_spec},
            "kind": case.kind, "plugins": [dataclasses.asdict(p) for p in case.plugins], "alone": case.alone,
            "baseline_plugins": [dataclasses.asdict(p) for p in case.baseline], "note": case.note,
            "processes": case.processes, **({"recipe": case.recipe} if case.recipe else {})}


def job_for(case: CaseSpec, suite: Suite, env: dict[str, Any], threads: int, plugins_dirs: list[str],
            probe: dict[str, Any] | None = None, process: int = 0, case_dir: str | None = None,
            warmup_settled: dict[str, int] | None = None) -> dict[str, Any]:
    """The job file a worker runs (`python -m harness.core.worker JOB RESULT`, under torchrun on any number of nodes).
    `process`: which of the case's processes this is (it seeds the order of the pairs); `case_dir`: the folder
    its processes share; `warmup_settled`: from the case's first process, which makes this one timing-only."""
    return {"case": dataclasses.asdict(case), "env": env, "threads": threads,
            "measure": dataclasses.asdict(suite.measure), "plugins_dirs": plugins_dirs, "seed": 0,
            "process": process, "repeat": suite.measure.repeat, "runner_pid": os.getpid(),
            "runner_started": RUNNER_STARTED, "runner_host": socket.gethostname(), "probe": probe,
            "case_dir": case_dir, "warmup_settled": warmup_settled}


def run_case(case: CaseSpec, suite: Suite, env: dict[str, Any], threads: int, workdir: Path,
             plugins_dirs: list[str], inline: bool = False, probe: dict[str, Any] | None = None,
             process: int = 0, fresh: bool = False, warmup_settled: dict[str, int] | None = None) -> dict[str, Any]:
    """Run one process of a case (forked from the preloaded server, or a fresh interpreter with `fresh`, or in
    this one with `inline`; harness.core.launch) and return its result record. The first process of a case measures
    everything (checks, memory, compile time, how long the warm-up took to settle); later ones, given
    `warmup_settled`, build both sides and time them only. With `probe`, one probe of one side
    instead: {search: KEY, side, value, ...} for one probe of a case's search (harness.core.searches)."""
    record = case_record(case)
    safe = safe_id(case.id)
    safe += f".{probe['search']}-{probe['side']}-{probe['value']}" if probe else f".p{process + 1}"
    job_path, result_path, log_path = (workdir / f"{safe}.{ext}" for ext in ("job.json", "result.json", "log"))
    timeout = case.timeout_s or suite.measure.timeout_s
    case_dir = workdir / f"{safe_id(case.id)}.shared"
    case_dir.mkdir(exist_ok=True)
    write_json(str(job_path), job_for(case, suite, env, threads, plugins_dirs, probe, process, str(case_dir),
                                      warmup_settled))
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    status = None
    if inline and case.processes > 1:
        record.update(status="failed",
                      error=f"needs {case.processes} processes under torchrun; run it without --inline")
        return record
    if inline:
        from harness.core import worker

        worker.run_job(str(job_path), str(result_path))
    else:
        status = launch.launch(case.processes, job_path, result_path, log_path, timeout, fresh)
    record["duration_s"] = time.perf_counter() - start
    record["log"] = str(log_path) if not inline else None
    if result_path.exists():
        record.update(json.loads(result_path.read_text()))
        if status == "hung at exit":
            record.setdefault("warnings", []).append("the case's processes had not exited a while after writing the "
                                                     "result; killed, result kept")
    elif status == "timeout":
        record.update(status="timeout", error=f"no result after the {timeout:g} s timeout; process killed")
    elif status and status.startswith("signal"):
        reason = " (the kernel's OOM killer sends SIGKILL)" if status == "signal SIGKILL" else ""
        record.update(status="crashed", error=f"worker killed by {status[7:]}{reason}{_tail(log_path)}")
    else:
        record.update(status="crashed", error=f"worker exited with {status} and wrote no result{_tail(log_path)}")
    return record


def _tail(log_path: Path, lines: int = 8) -> str:
    try:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last output:\n" + "\n".join(tail)) if tail else ""


def selected_cases(suite: Suite, only: list[str] | None = None) -> list[CaseSpec]:
    """The suite's cases that `harness run --only PLUGIN...` runs: those using one of `only` (all without it)."""
    return [c for c in suite.cases if not only or any(p.name in only for p in c.plugins)]


def references_needed(suite: Suite, only: list[str] | None = None) -> list[str]:
    """Names of trained reference models ("reference:NAME") that the workloads or plugins of the suite's cases
    use (those `selected_cases` picks with `only`: a reference no selected case uses is not trained)."""
    from harness.models.reference import model_source  # here: it imports torch

    names = set()
    for case in selected_cases(suite, only):
        values = list(case.workload_spec.values())
        values += [v for use in case.plugins + case.baseline for v in use.params.values()]
        names.update(model_source(v)[1] for v in values if isinstance(v, str) and model_source(v)[0] == "reference")
    return sorted(names)


def prepare_references(suite: Suite, device: str, progress: Callable[[str], None],
                       only: list[str] | None = None) -> None:
    """Train (or find cached) the reference models the suite's cases (`only`: the selected ones) need before any
    case starts, so their training shows as progress here and is not charged to a case's timeout."""
    names = references_needed(suite, only)
    if not names:
        return
    from harness.models.reference import load_reference

    for name in names:
        progress(f"reference model '{name}': loading, or training it on first use (cached afterwards)")
        load_reference(name, device, progress)


def run_suite(suite: Suite, env: dict[str, Any], out_dir: Path, *, threads: int, plugins_dirs: list[str],
              inline: bool = False, resume: bool = False, only: list[str] | None = None,
              progress: Callable[[str], None] = print, registry=None, repeat: int | None = None,
              fresh: bool = False) -> dict[str, Any]:
    """Run every case of `suite` in rounds and write out_dir/results.json after each process; returns the results.

    Each case is measured in `repeat` short processes (default: the suite's `measure.repeat`), one per round:
    round k runs the k-th process of every case, the cases in an order shuffled per round from a fixed seed
    (`round_order`), so a drift over minutes lands on every case. A case's record combines its processes
    (`combine_processes`); its capacity or serving search runs once, after the rounds. A case whose process fails
    gets no more processes. With `until_conclusive`, cases whose verdict is still too wide get further rounds, up
    to 2 x `repeat` processes. `fresh`: every process a new interpreter (harness.core.launch)."""
    if repeat is not None:  # as `harness run --repeat` does (harness.core.suite.apply_overrides)
        apply_overrides(suite, {"repeat": repeat})
    repeat = suite.measure.repeat
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    workdir = out_dir / "cases"
    workdir.mkdir(exist_ok=True)
    cases = [c for c in suite.cases if not only or any(p.name in only for p in c.plugins)]
    results = load(results_path) if resume and results_path.exists() else new_results(suite, env, out_dir.name,
                                                                                       plugins_dirs)
    results["status"] = "running"
    results["suite"]["repeat"] = repeat
    prints = {c.id: case_fingerprint(case_record(c), registry, c.workload_type) for c in cases}
    processes = resumed_processes(results, cases, workdir, prints, progress) if resume else {}
    if resume and processes:
        progress(f"resuming: {sum(map(len, processes.values()))} case processes already done")
    records = {c["id"]: c for c in results["cases"] if c["id"] in processes}
    searched = {cid for cid, r in records.items() if not wants_search(by_id(cases)[cid], r)}
    started, durations = time.perf_counter(), []

    def save() -> None:
        results["cases"] = [records[c.id] for c in cases if c.id in records]
        write_json(str(results_path), results)

    save()  # a started run holds a results file from its first second: no later run takes the folder for empty

    def one_process(case: CaseSpec, k: int, label: str) -> None:
        t0 = time.perf_counter()
        first = processes.get(case.id, [None])[0]
        settled = ((first or {}).get("measurement") or {}).get("warmup_settled")
        record = run_case(case, suite, env, threads, workdir, plugins_dirs, inline, process=k, fresh=fresh,
                          warmup_settled=settled)
        record["fingerprint"] = prints[case.id]
        durations.append(time.perf_counter() - t0)
        processes.setdefault(case.id, []).append(record)
        write_json(str(workdir / f"{safe_id(case.id)}.processes.json"), processes[case.id])
        records[case.id] = combine_processes(processes[case.id], suite.measure.min_effect)
        save()
        progress(f"{label} {case.id}, process {k + 1}: {process_line(record)}")

    try:
        rounds = 0
        while True:
            todo = [c for c in cases if needs_process(c, processes.get(c.id, []), repeat, rounds, suite)]
            if not todo:
                break
            order = round_order([c.id for c in todo], rounds)
            left = _eta(durations, sum(max(0, repeat - len(processes.get(c.id, []))) for c in cases))
            progress(f"round {rounds + 1}" + (f"/{repeat}" if rounds < repeat else " (until conclusive)")
                     + f": {len(todo)} cases{left}")
            for i, cid in enumerate(order):
                case = by_id(cases)[cid]
                one_process(case, len(processes.get(cid, [])), f"  [{i + 1}/{len(order)}]")
            rounds += 1
        for case in cases:
            record = records.get(case.id)
            if record is None:
                continue
            progress(f"{case.id}: " + one_line(record))
            sep = "\n    " if record.get("recipe") else "; "  # a recipe's summary is several lines
            figures = fmt_headline(record, sep) if record["status"] == "ok" else ""
            if figures:  # TTFT, TPOT, goodput...: what the time verdict alone hides
                progress("    " + figures)
            if case.id not in searched and record["status"] == "ok":
                run_searches(case, record, lambda at, probe: run_case(at, suite, env, threads, workdir, plugins_dirs,
                                                                      inline, probe=probe, fresh=fresh), progress,
                             suite.searches)
                searched.add(case.id)
                save()
            if registry is not None:
                registry.notify("harness_case_finished", results, case=record)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        save()
        progress(f"interrupted: {sum(map(len, processes.values()))} case processes kept in {results_path}; "
                 "finish with: " + run_command(results, "--out", shlex.quote(str(out_dir)), "--resume"))
        raise
    results["status"], results["finished"] = "complete", now()
    results["wall_s"] = time.perf_counter() - started
    save()
    return results


def combine_recipe(records: list[dict[str, Any]], min_effect: float) -> dict[str, Any]:
    """One record from a recipe case's processes (harness.core.recipe.analyse): the rounds of every process
    pooled into the effects, the front and the best configuration; a busy process, or one configuration's
    leftover threads running while another was timed, withholds every verdict."""
    from harness.core import recipe

    out = json.loads(json.dumps({k: v for k, v in records[0].items() if k != "recipe_timing"}))
    loads = [(r.get("measurement") or {}).get("foreign_load") or {} for r in records]
    busy = "; ".join(f"process {i + 1}: {ld['reason']}" for i, ld in enumerate(loads) if ld.get("busy")) or None
    leak = next((r["recipe_timing"].get("interference") for r in records if r["recipe_timing"].get("interference")),
                None)
    out["recipe"] = recipe.analyse(records[0]["recipe"], records, min_effect, busy or leak)
    out["recipe"]["round_times"] = recipe.rounds_of(records)
    out["repeats"] = [{"rounds": len(r["recipe_timing"]["rounds"]), "foreign_cpu": ld.get("foreign_cpu"),
                       "duration_s": r.get("duration_s"), "phases_s": (r.get("measurement") or {}).get("phases_s"),
                       "log": r.get("log")} for r, ld in zip(records, loads)]
    out["measurement"]["pairs"] = sum((r.get("measurement") or {}).get("pairs") or 0 for r in records)
    out["measurement"]["order"] = [o for r in records for o in (r.get("measurement") or {}).get("order") or []]
    out["measurement"]["processes_repeated"] = len(records)
    out["measurement"]["foreign_load"] = combine_loads(loads)
    out["warnings"] = combined_warnings(records, out)
    if len(records) == 1:
        out["warnings"].append("one process (--repeat 1): the intervals cover the noise within that process only, "
                               "not what changes between processes (docs/measurement.md)")
    out["duration_s"] = sum(r.get("duration_s") or 0.0 for r in records)
    return out


def needs_process(case: CaseSpec, done: list[dict[str, Any]], repeat: int, rounds: int, suite: Suite) -> bool:
    """Whether `case` runs a process in round `rounds`: until it has `repeat` of them (none after a failed one);
    beyond that, with until_conclusive, while its combined verdict is too wide, up to 2 x `repeat` (one process:
    it adds pairs in that process instead)."""
    if done and done[-1]["status"] != "ok" or len(done) > rounds:
        return False
    if len(done) < repeat:
        return True
    if not suite.measure.until_conclusive or repeat == 1 or len(done) >= 2 * repeat or case.alone:
        return False
    comparison = combine_processes(done, suite.measure.min_effect).get("comparison") or {}
    busy = ((done[-1].get("measurement") or {}).get("foreign_load") or {}).get("busy")
    return comparison.get("verdict") == "inconclusive" and not busy


def round_order(case_ids: list[str], round_index: int, seed: int = 0) -> list[str]:
    """The order of one round's cases: shuffled by a generator seeded with (seed, round), so a rerun of the suite
    runs its rounds in the same orders, and each round in a different one."""
    order = list(case_ids)
    random.Random(f"{seed}:{round_index}").shuffle(order)
    return order


def run_searches(case: CaseSpec, record: dict[str, Any], probe_case: Callable, progress: Callable[[str], None],
                 searches: dict[str, type]) -> None:
    """A case's searches (harness.core.searches; `searches`: the registry's, by key), once, after its processes;
    each search's record goes in the case's record under its key."""
    for key, block in case.searches.items():
        search = searches[key](block)
        progress("    " + search.announce())
        record[key] = search.run(case, probe_case)
        progress("    " + search.headline(record[key]))


def wants_search(case: CaseSpec, record: dict[str, Any]) -> bool:
    """Whether a case's record still lacks a search its case asks for (a run cut short during the search)."""
    return any(key not in record for key in case.searches)


def by_id(cases: list[CaseSpec]) -> dict[str, CaseSpec]:
    return {c.id: c for c in cases}


def safe_id(case_id: str) -> str:
    """A case id as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)[:120]


def resumed_processes(results: dict[str, Any], cases: list[CaseSpec], workdir: Path, prints: dict[str, str],
                      progress: Callable[[str], None] = print) -> dict[str, list]:
    """The processes already run of each case of an interrupted run (the runner keeps them in the case folder,
    CASE.processes.json); a case whose file is missing or damaged, or whose definition or code changed since
    (`prints`: harness.core.outdir.case_fingerprint by id), is measured again from the start."""
    out = {}
    for record in results.get("cases", []):
        if record["id"] not in by_id(cases) or record.get("status") == "interrupted":
            continue
        if record.get("fingerprint") != prints[record["id"]]:
            progress(f"{record['id']}: its workload, plugins or their code changed since it was measured; "
                     "measuring it again")
            continue
        try:
            done = json.loads((workdir / f"{safe_id(record['id'])}.processes.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(done, list) and done:
            out[record["id"]] = done
    return out


def _eta(durations: list[float], processes_left: int) -> str:
    if not durations or not processes_left:
        return ""
    return f", about {_fmt(sum(durations) / len(durations) * processes_left)} left"


def combine_processes(records: list[dict[str, Any]], min_effect: float) -> dict[str, Any]:
    """One record from a case measured in several processes (one is returned as it is, marked as such).

    Samples and blocks of each side are concatenated (latency statistics and throughput recomputed from them),
    `latency.process_blocks` says how many blocks each process gave; the comparison is `stats.compare_groups`
    over each process's pair ratios: the pooled median, with a two-level bootstrap interval (processes, then
    pairs) that covers the process-to-process variation one process's interval leaves out, and the variance
    components. Any process that failed makes the case failed; a busy process withholds the verdict; a check
    failed in any process is a failed check."""
    bad = next((r for r in records if r["status"] != "ok"), None)
    if bad is not None:
        where = f"process {records.index(bad) + 1} of {len(records)}: " if len(records) > 1 else ""
        return {**bad, "error": f"{where}{bad.get('error')}"}
    if records[0].get("recipe_timing"):
        return combine_recipe(records, min_effect)
    out = json.loads(json.dumps(records[0]))
    for key in ("baseline", "optimized"):
        if not isinstance(out.get(key), dict):
            continue
        lat = out[key]["latency"]
        data = [x for r in records for x in r[key]["latency"]["data"]]
        per_process = [r[key]["latency"].get("blocks") or [len(r[key]["latency"]["data"])] for r in records]
        new = stats.summarize(data, lat.get("iterations", 1), [b for bs in per_process for b in bs])
        new["process_blocks"] = [len(bs) for bs in per_process]
        out[key]["throughput"] = {u: v * lat["median"] / new["median"] for u, v in out[key]["throughput"].items()}
        out[key]["latency"] = new
    loads = [(r.get("measurement") or {}).get("foreign_load") or {} for r in records]
    busy = "; ".join(f"process {i + 1}: {ld['reason']}" for i, ld in enumerate(loads) if ld.get("busy")) or None
    if isinstance(out.get("baseline"), dict):
        groups = [r["comparison"].get("per_pair") or [] for r in records]
        comparison = stats.compare_groups(groups, min_effect, busy)
        comparison["per_pair"] = [x for g in groups for x in g]
        comparison["process_pairs"] = [len(g) for g in groups]
        comparison["memory_ratio"] = out["comparison"].get("memory_ratio")
        unequal = comparison["different_work"] = out["comparison"].get("different_work")
        if unequal and comparison["verdict"] != "inconclusive":
            comparison.update(verdict="inconclusive", reason=unequal)
        leak = next((r["comparison"].get("interference") for r in records if r["comparison"].get("interference")),
                    None)
        if leak:  # one side's leftover thread ran while the other was timed (harness.core.sides.Isolation)
            comparison.update(verdict="inconclusive", reason=leak, interference=leak)
        out["comparison"] = comparison
    out["repeats"] = [{"speedup": r["comparison"].get("speedup"), "ci95": r["comparison"].get("ci95"),
                       "verdict": r["comparison"].get("verdict"), "pairs": r["comparison"].get("pairs"),
                       "foreign_cpu": ld.get("foreign_cpu"), "duration_s": r.get("duration_s"),
                       "phases_s": (r.get("measurement") or {}).get("phases_s"), "log": r.get("log")}
                      for r, ld in zip(records, loads)]
    out["measurement"]["pairs"] = sum((r.get("measurement") or {}).get("pairs") or 0 for r in records)
    out["measurement"]["order"] = [o for r in records for o in (r.get("measurement") or {}).get("order") or []]
    out["measurement"]["processes_repeated"] = len(records)
    out["measurement"]["foreign_load"] = combine_loads(loads)
    names = {c["name"] for c in out.get("checks", [])}
    for i, r in enumerate(records[1:], start=2):
        out["checks"] += [{**c, "name": f"{c['name']} (process {i})"} for c in r.get("checks", [])
                          if not c["passed"] or c["name"] not in names]
    out["warnings"] = combined_warnings(records, out)
    if len(records) == 1 and isinstance(out.get("baseline"), dict):
        out["warnings"].append("one process (--repeat 1): the interval covers the noise within that process only, "
                               "not what changes between processes (docs/measurement.md)")
    out["duration_s"] = sum(r.get("duration_s") or 0.0 for r in records)
    return out


NOISE_WARNINGS = (": noisy:", ": significant environmental influence:", ": the first sample",
                  ": the first timed sample")


def combined_warnings(records: list[dict[str, Any]], combined: dict[str, Any]) -> list[str]:
    """Every process's warnings once, except the per-side noise and warm-up ones, which are said again of the
    pooled samples (`stats.warnings_for`) rather than once per process with its own figure."""
    if len(records) == 1:
        return list(records[0].get("warnings", []))
    kept = [w for r in records for w in r.get("warnings", []) if not any(n in w for n in NOISE_WARNINGS)]
    for side in ("baseline", "optimized"):
        if isinstance(combined.get(side), dict):
            latency = combined[side]["latency"]
            kept += stats.warnings_for(side, latency["data"], latency.get("blocks"))
    return list(dict.fromkeys(kept))


def combine_loads(loads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The foreign load of a case's processes as one record: the busiest process's, with every pair's figure
    (`per_pair`), the foreign CPU and steal averaged over the pairs, busy if any process was."""
    loads = [ld for ld in loads if ld]
    if not loads:
        return None
    out = dict(max(loads, key=lambda ld: ld.get("foreign_cpu") or 0.0))
    per_pair = [x for ld in loads for x in ld.get("per_pair") or []]
    weights = [len(ld.get("per_pair") or []) or 1 for ld in loads]
    for key in ("foreign_cpu", "steal"):
        if all(isinstance(ld.get(key), (int, float)) for ld in loads):
            out[key] = sum(ld[key] * w for ld, w in zip(loads, weights)) / sum(weights)
    out.update(per_pair=per_pair, busy=any(ld.get("busy") for ld in loads))
    return out


def _fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
