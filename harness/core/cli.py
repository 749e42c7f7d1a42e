"""The `harness` command: run, validate, plugins, env, report, compare, export, train-reference, new-plugin.

Exit codes: 0 all ok, 1 some case failed (or a regression gate tripped), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from harness.core.errors import InputError


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what CI timeouts, schedulers and a closed terminal send), raised where Ctrl-C's
    KeyboardInterrupt would be, so every path that keeps results on Ctrl-C keeps them on these too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"terminated by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness plugins | head`: the reader left; no traceback (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("--plugins-dir", action="append", default=[], metavar="DIR",
                        help="also load every *.py plugin file in DIR (repeatable)")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("run", help="run a suite (default: the quick suite) and write results + report")
    p.add_argument("suite", nargs="?", help="a suite file, or a built-in suite name (quick, training, inference, "
                                            "serving, vision, laptop-finetune, gpu-training, gpu-inference, "
                                            "serving-gpu)")
    p.add_argument("--device", type=device_arg, help="override the suite's device: auto, cpu, cuda, cuda:N")
    add_suite_overrides(p)
    p.add_argument("--out", type=Path,
                   help="output folder (default: reports/<run-id>); with --resume, the run to finish")
    p.add_argument("--only", action="append", metavar="PLUGIN", help="run only cases using PLUGIN (repeatable)")
    p.add_argument("--resume", action="store_true", help="finish the interrupted run in --out without redoing cases")
    p.add_argument("--inline", action="store_true", help="run cases in this process (debugging; no isolation)")
    p.add_argument("--threads", type=threads_arg, help="CPU threads (default: the suite's, else physical cores)")
    p.add_argument("--repeat", type=repeat_arg, metavar="N",
                   help="measure each case in N processes, one per round over the suite (default: the suite's "
                        "measure.repeat, 5); the interval covers process-to-process variation; 1: one process, "
                        "whose interval covers the noise within it only")
    p.add_argument("--fresh-processes", action="store_true",
                   help="start every case process as a new interpreter instead of forking it from a server that "
                        "imported torch once")
    p.add_argument("--until-conclusive", action="store_true",
                   help="after the minimum pairs, keep adding pairs until the verdict is decided or the suite's "
                        "max_time_s per side is spent")
    p.add_argument("--price-per-hour", type=positive_float, help="device price in $/hour for cost figures")
    p.add_argument("--prices", type=Path, help="YAML table of $/hour by device name (overrides the examples)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a suite without running it")
    p.add_argument("suite")
    add_suite_overrides(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list every plugin with kind, parameters, defaults and source")
    p.add_argument("--json", action="store_true")
    p.add_argument("--api", action="store_true", help="print what each interface (TrainAPI, GenerateAPI, ...) lets "
                                                       "an optimization touch: members and knobs")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("env", help="show the detected environment (CPU, GPU, NVML, peaks)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--probe", action="store_true", help="measure bf16 matmul and copy ceilings (GPU)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("report", help="render results.json into a self-contained HTML report")
    p.add_argument("results", type=Path)
    p.add_argument("-o", "--out", type=Path)
    p.add_argument("--price-per-hour", type=positive_float)
    p.add_argument("--prices", type=Path, help="YAML table of $/hour by device name")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="compare runs (machines, versions) case by case")
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, help="write an HTML comparison here")
    p.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                   help='regression gate, e.g. "median:10%%": exit 1 if a later run is significantly 10%% slower; '
                        'any --fail-if (or "--fail-if status" alone) also fails when a case that was ok is not ok, '
                        'fails a check it passed, or is missing')
    p.add_argument("--allow-missing", action="store_true", help="with --fail-if: a case missing from a later run "
                                                                 "is not a failure")
    p.add_argument("--price-per-hour", type=positive_float)
    p.add_argument("--prices", type=Path, help="YAML table of $/hour by device name")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="export results as pytest-benchmark JSON, CSV or Markdown")
    p.add_argument("results", type=Path)
    p.add_argument("--format", choices=["pytest-benchmark", "csv", "markdown"], default="pytest-benchmark")
    p.add_argument("-o", "--out", type=Path)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train-reference", help="train (or load cached) reference models for inference suites")
    p.add_argument("names", nargs="*", default=["target", "draft"])
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.set_defaults(func=cmd_train_reference)

    p = sub.add_parser("new-plugin", help="write a working plugin package (module, entry point, test)")
    p.add_argument("name", help="optimization name, e.g. my_opt")
    p.add_argument("--dir", type=Path, default=None, help="where to create the package (default: ./harness-NAME)")
    p.set_defaults(func=cmd_new_plugin)
    return parser


def add_suite_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="use this model in every workload that has one: a preset, reference:NAME or "
                                   "hf:DIR (a local Hugging Face folder)")
    p.add_argument("--budget-gb", type=positive_float, metavar="GB",
                   help="memory budget of every capacity search (GiB)")


def positive_int(text: str, most: int | None = None) -> int:
    """argparse type: a whole number >= 1 (`--threads 0` would silently mean the default), at most `most`."""
    shown = repr(text) if len(text) <= 40 else repr(text[:37] + "...")
    try:
        value = int(text)
    except ValueError:  # also more than 4,300 digits
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {shown})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {shown})")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most:,} (got {shown})")
    return value


def threads_arg(text: str) -> int:
    """argparse type of --threads: 1 to harness.core.env.MAX_THREADS."""
    from harness.core.env import MAX_THREADS

    return positive_int(text, MAX_THREADS)


def repeat_arg(text: str) -> int:
    """argparse type of --repeat: 1 to harness.core.timing.MAX_REPEAT processes per case."""
    from harness.core.timing import MAX_REPEAT

    return positive_int(text, MAX_REPEAT)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (nan and inf pass every `> 0` test later)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number (got {text!r})") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number (got {text!r})")
    return value


def device_arg(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (the hardware is looked for when the command runs)."""
    from harness.core.env import device_problem

    if device_problem(text):
        raise argparse.ArgumentTypeError(device_problem(text))
    return text


def suite_overrides(args) -> dict[str, Any]:
    """What this command line sets of a suite (harness.core.suite.OVERRIDES), read once: `load_suite` applies
    it and keeps it for the re-run advice."""
    from harness.core.suite import OVERRIDES

    return {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) not in (None, False)}


def cmd_run(args) -> int:
    from harness.core import env as envmod
    from harness.core import outdir
    from harness.core import results as results_file
    from harness.core.plugins import load_registry
    from harness.core.runner import prepare_references, run_suite
    from harness.core.suite import load_suite, resolve_suite_path

    registry = load_registry(args.plugins_dir)
    warn_load_errors(registry)
    suite = load_suite(resolve_suite_path(args.suite), registry, overrides=suite_overrides(args))
    if args.only:
        unknown = [name for name in args.only if name not in registry.optimizations]
        if unknown:
            raise InputError(f"unknown plugin '{unknown[0]}'; known: {', '.join(registry.optimizations)}",
                             field="--only")
        used = {u.name for c in suite.cases for u in c.plugins}
        if not used & set(args.only):
            raise InputError(f"no case of suite '{suite.name}' uses {', '.join(args.only)}; its cases use "
                             f"{', '.join(sorted(used))}", suite.path, field="--only")
    threads = suite.threads or envmod.physical_cores()
    try:
        env = envmod.detect(suite.device, threads)
    except ValueError as exc:
        raise InputError(str(exc), suite.path if not args.device else None, field="device") from None
    registry.extend_environment(env)
    if args.resume and not args.out:
        raise InputError("--resume needs --out: the folder of the run to finish", field="--resume")
    out = args.out or outdir.default_out(suite.name)
    lock = outdir.claim(out, args.resume)  # held until this process ends
    if args.resume:
        outdir.check_resume(results_file.load(out / "results.json"), suite, env, out)
    print(f"suite {suite.name}: {len(suite.cases)} cases on {env['device']} ({threads} threads) -> {out}",
          file=sys.stderr)
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        prepare_references(suite, env["device"], progress, only=args.only)
        results = run_suite(suite, env, out, threads=threads, plugins_dirs=[str(d) for d in args.plugins_dir],
                            inline=args.inline, resume=args.resume, only=args.only, progress=progress,
                            registry=registry, fresh=args.fresh_processes)
    except KeyboardInterrupt as stop:
        write_report_safely(out / "results.json", args.price_per_hour, load_prices(args))
        lock.release()
        raise stop
    report = write_report_safely(out / "results.json", args.price_per_hour, load_prices(args))
    lock.release()
    print_summary(results)
    print(f"results: {out / 'results.json'}" + (f"\nreport:  {report}" if report else ""))
    return 0 if all(c["status"] == "ok" and all(ch["passed"] for ch in c.get("checks", []))
                    for c in results["cases"]) else 1


def write_report_safely(results_path: Path, price_per_hour, prices=None) -> Path | None:
    """Render the HTML report; a report bug must not lose the run (the results file is already written)."""
    try:
        from harness.report.page import write_report

        return write_report(results_path, price_per_hour=price_per_hour, prices=prices)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: could not render the report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def print_summary(results: dict) -> None:
    """The end-of-run table: one line per case."""
    from harness.core.runner import run_command
    from harness.core.timing import MeasureSettings
    from harness.report.formatting import fmt_ratio, fmt_speedup

    rows = [("case", "status", "speedup [95% CI]", "verdict", "foreign CPU", "memory", "checks")]
    for c in results["cases"]:
        if c["status"] != "ok":
            rows.append((c["id"], c["status"], "", "", "", "", ""))
            continue
        cmp = c.get("comparison") or {}
        best = (c.get("recipe") or {}).get("best")
        if best:  # a recipe (harness.core.recipe): its best configuration against the baseline
            cmp = {**(best.get("vs_baseline") or {}), "verdict": f"best: {best.get('config') or 'none fits'}"}
        mem = f"{fmt_ratio(cmp['memory_ratio'])}x" if cmp.get("memory_ratio") else "n/a"
        checks = c.get("checks", [])
        load = ((c.get("measurement") or {}).get("foreign_load") or {}).get("foreign_cpu")
        passed = f"{sum(ch['passed'] for ch in checks)}/{len(checks)}"
        rows.append((c["id"], "ok", fmt_speedup(cmp), cmp.get("verdict", "n/a"),
                     "n/a" if load is None else f"{load:.0%}", mem, passed))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    withheld = [c for c in results["cases"] if c["status"] == "ok"
                and (c.get("comparison") or {}).get("verdict") == "inconclusive"]
    if withheld:
        print(f"\n{len(withheld)} verdict(s) withheld:")
        for c in withheld:
            print(f"  {c['id']}: {c['comparison'].get('reason')}")
        busy = [c for c in withheld if ((c.get("measurement") or {}).get("foreign_load") or {}).get("busy")]
        wide = [c for c in withheld if c not in busy]
        if busy:
            print("  busy: other processes used the CPU while these cases were timed; when the machine is quiet, "
                  f"run:\n    {run_command(results, *only_flags(busy))}")
        if wide:
            flags = only_flags(wide)
            done = max((c.get("measurement") or {}).get("processes_repeated") or 1 for c in wide)
            more = str(2 * done if done > 1 else MeasureSettings().repeat)
            print("  too wide: add processes until decided, or measure in more of them:\n"
                  f"    {run_command(results, *flags, '--until-conclusive')}\n"
                  f"    {run_command(results, *flags, '--repeat', more)}")


def only_flags(cases: list[dict]) -> list[str]:
    """--only PLUGIN for every plugin of `cases` (run only the cases that use them)."""
    return [f"--only {name}" for name in sorted({p["name"] for c in cases for p in c.get("plugins") or []})]


def warn_load_errors(registry) -> None:
    for name, error in registry.errors.items():
        print(f"warning: plugin {name} failed to load: {error}", file=sys.stderr)


def cmd_validate(args) -> int:
    from harness.core.plugins import load_registry
    from harness.core.suite import load_suite, resolve_suite_path

    registry = load_registry(args.plugins_dir)
    warn_load_errors(registry)
    suite = load_suite(resolve_suite_path(args.suite), registry, overrides=suite_overrides(args))
    print(f"{suite.path}: ok, suite '{suite.name}' with {len(suite.cases)} cases")
    for case in suite.cases:
        print(f"  {case.id}" + (f"  ({case.processes} processes)" if case.processes > 1 else ""))
    return 0


def cmd_plugins(args) -> int:
    from harness.core.optimization import describe_params, interface_table, missing_members
    from harness.core.plugins import load_registry

    registry = load_registry(args.plugins_dir)
    interfaces = registry.interfaces()
    if args.api:
        print(interface_table(interfaces), end="")
        return 0
    rows = []
    for name, cls in sorted(registry.optimizations.items()):
        requires = cls.requires.__name__ if cls.requires is not None else None
        rows.append({"name": name, "type": "optimization", "kind": cls.kind, "description": cls.description,
                     "requires": requires, "workloads": list(cls.workloads), "params": describe_params(cls.Params),
                     "source": registry.sources[name]})
    for name, cls in sorted(registry.workloads.items()):
        run = getattr(cls, "run_class", None)
        implements = sorted(p.__name__ for p in interfaces if run is not None and not missing_members(run, p))
        rows.append({"name": name, "type": "workload", "kind": cls.kind, "description": cls.description,
                     "implements": implements, "searches": [s.key for s in getattr(cls, "searches", ())],
                     "params": describe_params(cls.Spec), "source": registry.sources[name]})
    if args.json:
        print(json.dumps({"plugins": rows, "errors": registry.errors}, indent=1, default=str))
        return 0
    for row in rows:
        if row["type"] == "optimization":
            on = f", requires {row['requires']}" if row["requires"] else \
                f" ({' / '.join(row['workloads'])} workloads)" if row["workloads"] else ""
        else:
            on = f", implements {', '.join(row['implements'])}" if row["implements"] else ""
        print(f"{row['name']}  [{row['type']}, {row['kind'] or 'any workload'}{on}]  from {row['source']}")
        if row["description"]:
            print(f"    {row['description']}")
        for p in row["params"]:
            default = "(required)" if p["required"] else f"= {p['default']!r}"
            print(f"    {p['name']}: {p['type']} {default}" + (f"  # {p['help']}" if p["help"] else ""))
    for name, error in registry.errors.items():
        print(f"{name}  FAILED TO LOAD: {error}")
    return 0


def cmd_env(args) -> int:
    from harness.core import env as envmod

    try:
        env = envmod.detect(args.device)
        if args.probe:
            env["probe"] = envmod.probe(env["device"])
    except ValueError as exc:
        raise InputError(str(exc), field="--device") from None
    if args.json:
        print(json.dumps(env, indent=1, default=str))
        return 0
    cpu = env["cpu"]
    print(f"device     {env['device']}")
    print(f"cpu        {cpu['model']} ({cpu['cores_physical']} physical / {cpu['cores_logical']} logical cores, "
          f"{(cpu['memory_bytes'] or 0) / 2**30:.1f} GiB)")
    print(f"software   Python {env['python']}, torch {env['torch']}, {env['os']}")
    print(f"threads    {env['threads']['torch_num_threads']}")
    for d in (env["cuda"] or {}).get("devices", []):
        print(f"gpu        {d['name']}, {d['memory_bytes'] / 2**30:.1f} GiB, cc {d['capability']}, "
              f"{d['sm_count']} SMs, bf16 native: {d['bf16_native']}")
    print(f"nvml       {env['nvml']}")
    peak = env["peak"]
    print("peak       " + (f"bf16 {peak.get('bf16_flops', 0) / 1e12:.0f} TFLOP/s, "
                           f"{peak['bandwidth_bytes_s'] / 1e12:.2f} TB/s ({peak['source']})" if peak else "n/a"))
    if "probe" in env:
        pr = env["probe"]
        print(f"probe      bf16 matmul {pr['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s, "
              f"copy {pr['copy_bytes_s'] / 1e12:.2f} TB/s")
    return 0


def cmd_report(args) -> int:
    from harness.core.outdir import refuse_results_overwrite
    from harness.report.page import write_report

    refuse_results_overwrite(args.out, "-o", [args.results])
    print(write_report(args.results, args.out, price_per_hour=args.price_per_hour, prices=load_prices(args)))
    return 0


def cmd_compare(args) -> int:
    from harness.core.outdir import refuse_results_overwrite
    from harness.report import compare

    refuse_results_overwrite(args.out, "-o", args.results)
    return compare.main(args.results, out=args.out, fail_if=args.fail_if, price_per_hour=args.price_per_hour,
                        prices=load_prices(args), allow_missing=args.allow_missing)


def load_prices(args):
    """The --prices YAML table ({device name: $ per hour}), or None for the built-in examples."""
    if not getattr(args, "prices", None):
        return None
    from harness.core.cost import load_prices as load

    return load(args.prices)


def cmd_export(args) -> int:
    from harness.core.outdir import refuse_results_overwrite
    from harness.report import export

    refuse_results_overwrite(args.out, "-o", [args.results])
    return export.main(args.results, args.format, args.out)


def cmd_train_reference(args) -> int:
    from harness.core import env as envmod
    from harness.models.reference import main_train_reference

    try:
        device = envmod.resolve_device(args.device, {"cuda": envmod.cuda_info() if _cuda() else None})
    except ValueError as exc:
        raise InputError(str(exc), field="--device") from None
    return main_train_reference(args.names, device, args.force)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_new_plugin(args) -> int:
    from harness.scaffold import write_plugin_package

    path = write_plugin_package(args.name, args.dir)
    print(f"wrote {path}; install it with: pip install -e {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
