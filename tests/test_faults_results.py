"""Hand-edited and damaged results files, pytest-benchmark files, zeros and extremes, user text in every output
(issue 27: kinds 4, 7, 11, 12). Every reader renders what it can or refuses with one line naming the file and the
field, exit 2; never a traceback, never "nan"/"inf" text, never a gate that a broken time passes."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from harness.core import results as results_mod
from harness.core.cli import main as cli
from harness.core.errors import InputError
from harness.core.replicate import load_results
from harness.report.export import to_pytest_benchmark
from harness.report.formatting import fmt_ratio, fmt_speedup, verdict_text

ROOT = Path(__file__).parent.parent
REFERENCE = ROOT / "reports" / "reference"


def _base() -> dict[str, Any]:
    """A real schema-2 results file cut to six cases: two measured ones, a failed one, one timed alone, a capacity
    search and a serving search (from the committed references)."""
    quick = json.loads((REFERENCE / "epyc-2core-quick" / "results.json").read_text())
    capacity = results_mod.upgrade(json.loads((REFERENCE / "epyc-2core-capacity" / "results.json").read_text()))
    serving = json.loads((REFERENCE / "epyc-2core-serving" / "results.json").read_text())
    train, gen = quick["cases"][0], quick["cases"][8]
    failed = {k: train[k] for k in ("workload", "kind", "plugins", "baseline_plugins", "note", "processes")}
    failed.update(id="train-nano/broken", status="crashed", error="worker exited with signal 11", duration_s=1.5,
                  log=None)
    alone = copy.deepcopy(gen)
    alone.update(id="gen-nano/alone", alone=True, comparison={"speedup": None, "ci95": None, "verdict": "n/a"},
                 checks=[])
    del alone["baseline"]
    return {**quick, "cases": [train, gen, failed, alone, capacity["cases"][0], serving["cases"][0]]}


BASE = _base()


def _at(data: Any, path: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path, indices as numbers: "cases.0.baseline"."""
    keys = [int(k) if k.lstrip("-").isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        data = data[k]
    return data, keys[-1]


def put(path: str, value: Any):
    def edit(d: dict) -> None:
        container, key = _at(d, path)
        container[key] = value
    return edit


def drop(path: str):
    def edit(d: dict) -> None:
        container, key = _at(d, path)
        del container[key]
    return edit


def both(*edits):
    def edit(d: dict) -> None:
        for e in edits:
            e(d)
    return edit


LAT = "cases.0.baseline.latency"
HOSTILE = '=cmd|" /C calc\'!A0 <script>alert(1)</script> | `x` \n next line </script> ünï $\\frac{1$ $x^2$'

# (name, edit, field): field is what the refusal must name; None: every reader renders the file (exit 0 or 1)
DAMAGES = [
    ("no schema_version", drop("schema_version"), "no schema_version/cases"),
    ("schema_version a string", put("schema_version", "2"), "schema_version"),
    ("cases an object", put("cases", {"a": 1}), "cases"),
    ("a case a number", put("cases.1", 7), "cases[1]"),
    ("no case id", drop("cases.0.id"), "cases[0].id"),
    ("case id a number", put("cases.0.id", 5), "cases[0].id"),
    ("duplicate case id", put("cases.1.id", BASE["cases"][0]["id"]), "cases[1].id"),
    ("no status", drop("cases.0.status"), "cases[0].status"),
    ("no baseline side", drop("cases.0.baseline"), None),
    ("baseline null", put("cases.0.baseline", None), None),
    ("optimized a string", put("cases.0.optimized", "fast"), "cases[0].optimized"),
    ("no latency", drop("cases.0.baseline.latency"), "cases[0].baseline.latency"),
    ("no median", drop(f"{LAT}.median"), "cases[0].baseline.latency.median"),
    ("median a string", put(f"{LAT}.median", "abc"), "cases[0].baseline.latency.median"),
    ("median negative", put(f"{LAT}.median", -0.1), "cases[0].baseline.latency.median"),
    ("median zero", put(f"{LAT}.median", 0), "cases[0].baseline.latency.median"),
    ("median NaN", put(f"{LAT}.median", math.nan), "cases[0].baseline.latency.median"),
    ("median infinite", put(f"{LAT}.median", math.inf), "cases[0].baseline.latency.median"),
    ("median huge", put(f"{LAT}.median", 1e300), "cases[0].baseline.latency.median"),
    ("median true", put(f"{LAT}.median", True), "cases[0].baseline.latency.median"),
    ("samples empty", put(f"{LAT}.data", []), None),
    ("samples a string", put(f"{LAT}.data", "0.1 0.2"), "cases[0].baseline.latency.data"),
    ("a sample a string", put(f"{LAT}.data.3", "x"), "cases[0].baseline.latency.data[3]"),
    ("a sample zero", put(f"{LAT}.data.0", 0.0), "cases[0].baseline.latency.data[0]"),
    ("a sample negative", put(f"{LAT}.data.1", -1e-3), "cases[0].baseline.latency.data[1]"),
    ("blocks longer than the samples", put(f"{LAT}.blocks", [100, 100]), None),
    ("a block of zero", put(f"{LAT}.blocks.0", 0), "cases[0].baseline.latency.blocks[0]"),
    ("process blocks a string", put(f"{LAT}.process_blocks", "5"), "cases[0].baseline.latency.process_blocks"),
    ("every sample enormous and tiny", both(put(f"{LAT}.data", [1e8] * 40), put("cases.0.optimized.latency.data",
                                                                             [1e-11] * 40)), None),
    ("speedup a string", put("cases.0.comparison.speedup", "fast"), "cases[0].comparison.speedup"),
    ("speedup zero", put("cases.0.comparison.speedup", 0), "cases[0].comparison.speedup"),
    ("speedup negative", put("cases.0.comparison.speedup", -2), "cases[0].comparison.speedup"),
    ("speedup null", put("cases.0.comparison.speedup", None), None),
    ("ci95 one number", put("cases.0.comparison.ci95", [1.0]), "cases[0].comparison.ci95"),
    ("ci95 with a string", put("cases.0.comparison.ci95", [1.0, "x"]), "cases[0].comparison.ci95[1]"),
    ("per-pair ratio zero", put("cases.0.comparison.per_pair.0", 0), "cases[0].comparison.per_pair[0]"),
    ("comparison a list", put("cases.0.comparison", []), "cases[0].comparison"),
    ("comparison null", put("cases.0.comparison", None), None),
    ("no comparison", drop("cases.1.comparison"), None),
    ("process pairs fractional", put("cases.0.comparison.process_pairs", [1.5]),
     "cases[0].comparison.process_pairs[0]"),
    ("measurement a string", put("cases.0.measurement", "x"), "cases[0].measurement"),
    ("order a number", put("cases.0.measurement.order", 3), "cases[0].measurement.order"),
    ("foreign per-pair a string", put("cases.0.measurement.foreign_load.per_pair", "x"),
     "cases[0].measurement.foreign_load.per_pair"),
    ("processes repeated zero", put("cases.0.measurement.processes_repeated", 0),
     "cases[0].measurement.processes_repeated"),
    ("warm-up a string", put("cases.0.measurement.warmup_s", "long"), "cases[0].measurement.warmup_s"),
    ("throughput a list", put("cases.0.baseline.throughput", []), "cases[0].baseline.throughput"),
    ("a throughput a string", put("cases.0.baseline.throughput.tokens_per_s", "many"),
     "cases[0].baseline.throughput.tokens_per_s"),
    ("peak memory negative", put("cases.0.baseline.memory.peak_bytes", -5), "cases[0].baseline.memory.peak_bytes"),
    ("memory breakdown a list", put("cases.0.optimized.memory.breakdown", []),
     "cases[0].optimized.memory.breakdown"),
    ("energy a string", put("cases.0.baseline.energy", "x"), "cases[0].baseline.energy"),
    ("extras of every kind", put("cases.1.baseline.extra", {"ttft_s": [1, 2], "mfu": "x", "tpot_s": {"a": 1},
                                                             "x_bytes": None, "regime": True}), None),
    ("checks a string", put("cases.0.checks", "passed"), "cases[0].checks"),
    ("a check passed a string", put("cases.0.checks", [{"name": "loss", "passed": "yes"}]),
     "cases[0].checks[0].passed"),
    ("a check without a name", put("cases.0.checks", [{"passed": True}]), "cases[0].checks[0].name"),
    ("warnings a string", put("cases.0.warnings", "noisy"), "cases[0].warnings"),
    ("a warning a number", put("cases.0.warnings", [3]), "cases[0].warnings[0]"),
    ("repeats a number", put("cases.0.repeats", 5), "cases[0].repeats"),
    ("plugins a string", put("cases.0.plugins", "bf16"), "cases[0].plugins"),
    ("a plugin without a name", put("cases.0.plugins", [{"params": {}}]), "cases[0].plugins[0].name"),
    ("workload a string", put("cases.0.workload", "train"), "cases[0].workload"),
    ("workload spec a list", put("cases.0.workload.spec", [1]), "cases[0].workload.spec"),
    ("suite a string", put("suite", "quick"), "suite"),
    ("no suite", drop("suite"), None),
    ("no environment", drop("environment"), None),
    ("environment a list", put("environment", []), "environment"),
    ("no run id, dates or status", both(drop("run_id"), drop("started"), drop("finished"), drop("status")), None),
    ("capacity a string", put("cases.4.capacity", "x"), "cases[4].capacity"),
    ("capacity without sides", drop("cases.4.capacity.sides"), "cases[4].capacity.sides"),
    ("capacity probe value a string", put("cases.4.capacity.sides.baseline.probes.0.value", "a"),
     "cases[4].capacity.sides.baseline.probes[0].value"),
    ("capacity largest among no probe", put("cases.4.capacity.sides.baseline.largest", 12345), None),
    ("serving slo a list", put("cases.5.serving.slo", []), "cases[5].serving.slo"),
    ("serving point metrics a string", put("cases.5.serving.sides.baseline.searches.0.points.0.metrics", "x"),
     "cases[5].serving.sides.baseline.searches[0].points[0].metrics"),
    ("serving sweep shorter than its rates", put("cases.5.serving.sweep.points.baseline", []), None),
    ("serving slo metric a string", put("cases.5.serving.sides.baseline.searches.0.points.0.metrics.ttft_p90_s",
                                        "slow"), None),
    ("hostile text everywhere", both(put("cases.0.id", HOSTILE), put("cases.0.note", HOSTILE),
                                     put("cases.2.error", HOSTILE), put("suite.name", HOSTILE),
                                     put("suite.description", HOSTILE), put("cases.0.warnings", [HOSTILE]),
                                     put("cases.0.plugins.0.params", {"x": HOSTILE}),
                                     put("environment.hostname", HOSTILE)), None),
    # a reviewer's hand edits that were tracebacks in report, export or compare
    ("environment cpu a string", put("environment.cpu", "x"), "environment.cpu"),
    ("environment cuda a number", put("environment.cuda", 5), "environment.cuda"),
    ("environment cuda device without a name", put("environment.cuda", {"devices": [{}]}),
     "environment.cuda.devices[0].name"),
    ("environment device an unreadable cuda index", both(put("environment.device", "cuda:x"),
                                                         put("environment.cuda", {"devices": [{"name": "H100"}]})),
     "environment.device"),
    ("environment os a number", put("environment.os", 5), "environment.os"),
    ("environment git a list", put("environment.git", []), "environment.git"),
    ("a case without workload", drop("cases.0.workload"), None),
    ("a bare ok case", put("cases.1", {"id": "bare", "status": "ok"}), None),
    ("a case without plugins, kind or baseline plugins", both(drop("cases.0.plugins"), drop("cases.0.kind"),
                                                              drop("cases.0.baseline_plugins")), None),
    ("a plugin without params", put("cases.0.plugins", [{"name": "bf16"}]), None),
    ("a workload without name, type or spec", put("cases.0.workload", {}), None),
    ("a batch that is a string", put("cases.0.workload.spec.batch", "big"), None),
    ("capacity with no side", put("cases.4.capacity.sides", {}), None),
    ("capacity with one side", drop("cases.4.capacity.sides.optimized"), None),
    ("capacity without ratios", both(drop("cases.4.capacity.ratio"), drop("cases.4.capacity.throughput_ratio")),
     None),
    ("capacity side without probes or stop", both(drop("cases.4.capacity.sides.baseline.probes"),
                                                  drop("cases.4.capacity.sides.baseline.stopped")), None),
    ("serving with no side", put("cases.5.serving.sides", {}), None),
    ("serving with one side", drop("cases.5.serving.sides.optimized"), None),
    ("serving without rel_tol", drop("cases.5.serving.rel_tol"), None),
    ("serving slo of no metric", put("cases.5.serving.slo", {}), None),
    ("serving side without searches", drop("cases.5.serving.sides.baseline.searches"), None),
    ("serving point without meets_slo", drop("cases.5.serving.sides.baseline.searches.0.points.0.meets_slo"), None),
    ("serving sweep without rates", drop("cases.5.serving.sweep.rates"), None),
    ("serving sweep rate null", put("cases.5.serving.sweep.rates.0", None), "cases[5].serving.sweep.rates[0]"),
    ("serving rate range half null", put("cases.5.serving.sides.baseline.rate_range", [1.0, None]),
     "cases[5].serving.sides.baseline.rate_range[1]"),
    ("repeats of an empty record", put("cases.0.repeats", [{}]), None),
    ("variance without within_cv", put("cases.0.comparison.variance", {"between_cv": 0.1}), None),
    ("energy without figures", put("cases.0.baseline.energy", {}), None),
    ("one side without throughput", drop("cases.0.optimized.throughput"), None),
    ("one side without extra", both(put("cases.1.baseline.extra", {"ttft_s": 0.1}), drop("cases.1.optimized.extra")),
     None),
    ("too few requests a number", put("cases.1.baseline.extra", {"too_few_requests": 5}),
     "cases[1].baseline.extra.too_few_requests"),
    ("a sample null", put(f"{LAT}.data.0", None), "cases[0].baseline.latency.data[0]"),
    ("a per-pair ratio null", put("cases.0.comparison.per_pair.0", None), "cases[0].comparison.per_pair[0]"),
    ("ci95 half null", put("cases.0.comparison.ci95", [1.0, None]), "cases[0].comparison.ci95[1]"),
    ("run warnings a number", put("warnings", 5), "warnings"),
    ("a run warning a number", put("warnings", [5]), "warnings[0]"),
]


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))  # NaN and Infinity as Python writes them: what a hand edit can leave
    return path


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _readers(tmp_path: Path, damaged: Path, good: Path) -> list[tuple[str, ...]]:
    """Every command that reads a results file, on the damaged file (and against a good one)."""
    return [("report", damaged, "-o", tmp_path / "report.html"),
            *[("export", damaged, "--format", f, "-o", tmp_path / f"export.{f}")
              for f in ("pytest-benchmark", "csv", "markdown")],
            ("compare", good, damaged, "--fail-if", "median:10%", "-o", tmp_path / "compare.html"),
            ("compare", damaged, good, "-o", tmp_path / "compare2.html")]


def test_the_base_file_is_read_by_every_reader(tmp_path, capsys):
    good = _write(tmp_path / "good.json", BASE)
    for args in _readers(tmp_path, good, good):
        rc, _, err = _run(capsys, *args)
        assert rc == 0, (args, err)


@pytest.mark.parametrize("name,edit,field", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_results_file_is_rendered_or_refused_in_one_line(tmp_path, capsys, name, edit, field):
    data = copy.deepcopy(BASE)
    edit(data)
    damaged, good = _write(tmp_path / "damaged.json", data), _write(tmp_path / "good.json", BASE)
    for args in _readers(tmp_path, damaged, good):
        rc, out, err = _run(capsys, *args)  # an exception other than InputError fails the test here
        if field is None:
            assert rc in (0, 1), (args, err)
            continue
        assert rc == 2, (args, out)
        assert err.count("\n") == 1 and err.startswith(f"error: {damaged}: "), err
        assert field in err, err
    text = "".join(p.read_text() for p in tmp_path.iterdir() if p.name != "damaged.json" and p.is_file())
    assert "nan×" not in text and "inf×" not in text and "nanx" not in text and "infx" not in text


# ---- every key a reader may open, systematically: deleted, a string, a number, an empty object or list ----

MUTATIONS = {"deleted": None, "a string": "x", "a number": 5, "an empty object": {}, "an empty list": []}


def key_paths(data: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key of every nested object in `data` (of a list of records, its first item's; of the cases, every
    case's), depth first; the samples themselves (`data`) are one key, not one per sample."""
    out: list[tuple[Any, ...]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*where, k))
            if k != "data":
                out += key_paths(v, (*where, k))
    elif isinstance(data, list) and data and isinstance(data[0], (dict, list)):
        for i in range(len(data) if where == ("cases",) else 1):
            out += key_paths(data[i], (*where, i))
    return out


def mutated(data: Any, path: tuple[Any, ...], mutation: str) -> Any:
    """A copy of `data` with the key at `path` deleted or replaced as `mutation` says."""
    data = copy.deepcopy(data)
    container = data
    for k in path[:-1]:
        container = container[k]
    if mutation == "deleted":
        del container[path[-1]]
    else:
        container[path[-1]] = copy.deepcopy(MUTATIONS[mutation])
    return data


def _accepted(data: Any, path: tuple[Any, ...]) -> bool:
    """Whether the one reader check takes `data`; a refusal must be an InputError naming a field."""
    try:
        results_mod.validate(copy.deepcopy(data))
        return True
    except InputError as exc:
        assert exc.field or "schema_version" in str(exc), (path, str(exc))
        return False


def _no_traceback(tmp_path: Path, capsys, damaged: Path, good: Path) -> None:
    for args in _readers(tmp_path, damaged, good):
        rc, out, err = _run(capsys, *args)  # an exception that is not an InputError fails the test here
        assert rc in (0, 1, 2) and "Traceback" not in out + err, (args, err)


@pytest.mark.skip(reason="unfinished: the sweep over every key runs over 10 minutes on 2 cores and was not "
                         "seen passing in this session (issue 27 note); the named damages above cover the kinds")
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_every_key_damaged_is_rendered_or_refused(tmp_path, capsys, mutation):
    """Each key of the base file, in turn, damaged as `mutation` says: the reader check refuses it (InputError
    naming the field) or every reader renders it. The accepted damages of the cases ride together in one file
    (each a copy of its case under a new id), the others in a file each."""
    cases, runs = [], []
    for path in key_paths(BASE):
        data = mutated(BASE, path, mutation)
        if not _accepted(data, path):
            continue
        if path[0] == "cases" and len(path) > 2:
            case = data["cases"][path[1]]
            case["id"] = f"{BASE['cases'][path[1]]['id']} {'.'.join(map(str, path[2:]))} {mutation}"
            cases.append(case)
        elif path[0] != "cases":
            runs.append(data)
    assert cases, "no damage of a case was accepted: the test tests nothing"
    good = _write(tmp_path / "good.json", BASE)
    runs.append({**BASE, "cases": cases})
    for i, data in enumerate(runs):
        _no_traceback(tmp_path, capsys, _write(tmp_path / f"damaged{i}.json", data), good)


def test_a_hand_edited_error_names_file_field_and_value(tmp_path, capsys):
    data = copy.deepcopy(BASE)
    data["cases"][2] = {**data["cases"][0], "id": "third"}
    data["cases"][2]["baseline"] = {**data["cases"][2]["baseline"],
                                    "latency": {**data["cases"][2]["baseline"]["latency"], "median": "abc"}}
    path = _write(tmp_path / "r.json", data)
    rc, _, err = _run(capsys, "report", path)
    assert rc == 2
    assert err == (f"error: {path}: cases[2].baseline.latency.median: expected a time in seconds (> 0, at most 1e+09),"
                   ' got "abc"\n')


def test_not_json_and_not_an_object_are_refused(tmp_path, capsys):
    for name, body in (("truncated.json", json.dumps(BASE)[:5000]), ("list.json", "[1, 2]"), ("null.json", "null"),
                       ("empty.json", "")):
        path = tmp_path / name
        path.write_text(body)
        for args in _readers(tmp_path, path, path)[:2]:
            rc, _, err = _run(capsys, *args)
            assert rc == 2 and err.startswith(f"error: {path}"), err


def test_replicate_reads_through_the_same_check(tmp_path):
    data = copy.deepcopy(BASE)
    data["cases"][0]["comparison"]["speedup"] = "fast"
    path = _write(tmp_path / "r.json", data)
    with pytest.raises(InputError) as info:
        load_results([path, path])
    assert str(info.value).startswith(f"{path}: cases[0].comparison.speedup: expected a ratio")
    good = _write(tmp_path / "g.json", BASE)
    assert [r["cases"][0]["id"] for r in load_results([good, good])] == [BASE["cases"][0]["id"]] * 2


# ---- pytest-benchmark files (compare reads them) ----

def _bench_file(tmp_path: Path, name: str, edit=None) -> Path:
    data = to_pytest_benchmark(copy.deepcopy(BASE))
    if edit:
        edit(data)
    return _write(tmp_path / name, data)


BENCH_DAMAGES = [
    ("benchmarks an object", put("benchmarks", {}), "benchmarks"),
    ("a benchmark a string", put("benchmarks.0", "x"), "benchmarks[0]"),
    ("stats missing", drop("benchmarks.0.stats"), "benchmarks[0].stats"),
    ("median a string", put("benchmarks.0.stats.median", "x"), "benchmarks[0].stats.median"),
    ("data a string", put("benchmarks.0.stats.data", "x"), "benchmarks[0].stats.data"),
    ("rounds a string", put("benchmarks.0.stats.rounds", "many"), "benchmarks[0].stats.rounds"),
    ("extra_info a list", put("benchmarks.0.extra_info", [1]), "benchmarks[0].extra_info"),
    ("harness case a number", put("benchmarks.0.extra_info.harness_case", 5), "benchmarks[0].extra_info.harness_case"),
    ("no name at all", both(drop("benchmarks.0.name"), drop("benchmarks.0.fullname"),
                            drop("benchmarks.0.extra_info.harness_case")), "benchmarks[0].name"),
    ("machine_info a list", put("machine_info", []), "machine_info"),
    ("throughput a string", put("benchmarks.0.extra_info.throughput", "x"), "throughput"),
    ("median NaN", put("benchmarks.0.stats.median", math.nan), "benchmarks[0].stats.median"),
    ("no median", drop("benchmarks.0.stats.median"), None),
    ("samples zero", put("benchmarks.0.stats.data", [0.0] * 10), None),
    ("median negative", put("benchmarks.0.stats.median", -1.0), None),
]


@pytest.mark.parametrize("name,edit,field", BENCH_DAMAGES, ids=[d[0] for d in BENCH_DAMAGES])
def test_a_damaged_pytest_benchmark_file_is_compared_or_refused(tmp_path, capsys, name, edit, field):
    damaged, good = _bench_file(tmp_path, "damaged.json", edit), _bench_file(tmp_path, "good.json")
    for first, later in ((good, damaged), (damaged, good)):
        rc, out, err = _run(capsys, "compare", first, later, "--fail-if", "median:10%", "-o", tmp_path / "c.html")
        if field is None:
            assert rc == 1, (out, err)  # the damaged side is "not comparable": the gate cannot pass it
            assert "not comparable" in out
        else:
            assert rc == 2 and err.startswith(f"error: {damaged}: ") and field in err, err
        assert "nan" not in out.lower().replace("nano", "") and "inf" not in out.replace("info", "")


# ---- kind 11: zeros and extremes ----

def _zero_bench(tmp_path: Path, name: str, scale: float = 1.0, zero: bool = False) -> Path:
    """A foreign pytest-benchmark file of three benchmarks; with `zero` the second one ran in 0.0 s."""
    benches = []
    for i, t in enumerate((1e-3, 2e-3, 4e-3)):
        data = [0.0] * 8 if zero and i == 1 else [t * scale * (1 + 0.01 * k) for k in range(8)]
        s = sorted(data)
        benches.append({"name": f"test_{i}", "fullname": f"t.py::test_{i}", "group": None, "params": None,
                        "extra_info": {}, "options": {}, "stats": {
                            "min": s[0], "max": s[-1], "mean": sum(s) / 8, "median": (s[3] + s[4]) / 2,
                            "stddev": 0.0, "q1": s[2], "q3": s[5], "iqr": s[5] - s[2], "rounds": 8,
                            "iterations": 1, "outliers": "0;0", "data": data}})
    return _write(tmp_path / name, {"machine_info": {"node": "x"}, "commit_info": {}, "benchmarks": benches,
                                    "datetime": "2026-01-01T00:00:00", "version": "5.1.0"})


@pytest.mark.parametrize("zero_in", ["later", "reference"])
def test_a_benchmark_at_zero_seconds_is_not_comparable_not_infinite(tmp_path, capsys, zero_in):
    ref = _zero_bench(tmp_path, "ref.json", zero=zero_in == "reference")
    later = _zero_bench(tmp_path, "later.json", zero=zero_in == "later")
    rc, out, err = _run(capsys, "compare", ref, later, "--fail-if", "median:10%", "-o", tmp_path / "c.html")
    assert rc == 1, err  # a time that cannot be compared never passes the gate
    assert "t.py::test_1" in out and "not comparable" in out  # listed, not dropped
    assert "FAIL: t.py::test_1" in out
    assert "infx" not in out and "nan" not in out
    assert "geometric-mean speedup 1.00x" in out  # over the two comparable benchmarks
    html = (tmp_path / "c.html").read_text()
    assert "not comparable" in html and "inf×" not in html and "nan×" not in html


def test_a_1900x_slowdown_reads_as_such(tmp_path, capsys):
    ref, later = _zero_bench(tmp_path, "ref.json"), _zero_bench(tmp_path, "later.json", scale=1900.0)
    rc, out, _ = _run(capsys, "compare", ref, later, "-o", tmp_path / "c.html")
    assert rc == 0
    assert "geometric-mean speedup 0.00053x [0.00051, 0.00054]" in out
    assert "t.py::test_0 [-] 0.00053x (1,900× slower)" in out
    assert "0.00x" not in out and "0.00]" not in out


def test_ratios_keep_their_significant_digits():
    assert fmt_ratio(1.6234) == "1.62"
    assert fmt_ratio(1 / 1900) == "0.00053"
    assert fmt_ratio(0.05) == "0.050"
    assert fmt_ratio(1900.4) == "1,900"
    assert fmt_ratio(123.4) == "123"
    assert fmt_ratio(None) == "n/a" and fmt_ratio(math.inf) == "n/a" and fmt_ratio(math.nan) == "n/a"
    assert fmt_ratio(0.0) == "n/a" and fmt_ratio(-1.0) == "n/a"
    assert fmt_speedup({"speedup": 1 / 1900, "ci95": [1 / 1950, 1 / 1850]}) == "0.00053x [0.00051, 0.00054]"
    assert verdict_text({"speedup": 1 / 1900, "verdict": "slower"}) == "1,900× slower"


def test_a_statistic_missing_in_one_file_is_not_comparable_not_an_infinite_regression(tmp_path, capsys):
    ref = _zero_bench(tmp_path, "ref.json")
    data = json.loads(ref.read_text())
    data["benchmarks"][0]["stats"].pop("stddev")
    later = _write(tmp_path / "later.json", data)
    rc, out, _ = _run(capsys, "compare", ref, later, "--fail-if", "stddev:10%")
    assert rc == 1
    assert "inf" not in out.replace("info", "")
    assert "stddev:10%: not comparable: run #1 has no stddev" in out
    rc, out, _ = _run(capsys, "compare", ref, later, "--fail-if", "median:10%")
    assert rc == 0, out  # the median is in both: nothing else is judged


def test_a_zero_statistic_in_the_reference_is_not_an_infinite_percentage(tmp_path, capsys):
    ref = _zero_bench(tmp_path, "ref.json")
    data = json.loads(ref.read_text())
    data["benchmarks"][0]["stats"]["stddev"] = 1e-5
    later = _write(tmp_path / "later.json", data)
    rc, out, _ = _run(capsys, "compare", ref, later, "--fail-if", "stddev:10%")
    assert rc == 1
    assert "not comparable: run #0's stddev is 0" in out and "inf" not in out.replace("info", "")


# ---- kind 12: user text in every output ----

def test_user_text_is_escaped_in_every_export_and_page(tmp_path, capsys):
    data = copy.deepcopy(BASE)
    dict((name, edit) for name, edit, _ in DAMAGES)["hostile text everywhere"](data)
    path = _write(tmp_path / "hostile.json", data)
    for fmt in ("csv", "markdown", "pytest-benchmark"):
        assert _run(capsys, "export", path, "--format", fmt, "-o", tmp_path / f"x.{fmt}")[0] == 0
    assert _run(capsys, "report", path, "-o", tmp_path / "r.html")[0] == 0
    assert _run(capsys, "compare", path, path, "-o", tmp_path / "c.html")[0] == 0
    rows = list(csv.reader(io.StringIO((tmp_path / "x.csv").read_text())))
    cells = [cell for row in rows for cell in row]
    assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(cell) for cell in cells), cells
    assert "'" + HOSTILE in cells  # whole, one cell, marked as text
    md = (tmp_path / "x.markdown").read_text()
    assert "<script>" not in md and "\n next line" not in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") - line.count("\\|") == table[0].count(" | ") for line in table[2:])
    bench = json.loads((tmp_path / "x.pytest-benchmark").read_text())
    assert bench["benchmarks"][0]["extra_info"]["harness_case"] == HOSTILE  # JSON keeps text as text
    for page in ("r.html", "c.html"):
        html = (tmp_path / page).read_text()
        assert "<script>alert" not in html, page
        assert html.count("<script>") == html.count("</script>"), page


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


# ---- kind 7: the report of a huge results file is bounded ----

def test_a_report_of_200000_samples_per_side_is_bounded_and_says_so(tmp_path, capsys):
    data = copy.deepcopy(BASE)
    case = data["cases"][0]
    n = 200_000
    for key, t in (("baseline", 0.09), ("optimized", 0.06)):
        lat = case[key]["latency"]
        lat["data"] = [t * (1 + 0.1 * ((i * 7919) % 1000) / 1000) for i in range(n)]
        lat["blocks"] = [1] * n
        lat.pop("process_blocks", None)
    case["comparison"]["per_pair"] = [1.5 * (1 + 0.05 * ((i * 104729) % 1000) / 1000) for i in range(n)]
    case["comparison"].pop("process_pairs", None)
    case["measurement"]["order"] = ["BO", "OB"] * (n // 2)
    case["measurement"]["foreign_load"]["per_pair"] = [0.0] * n
    data["cases"] = [case]
    path = _write(tmp_path / "big.json", data)
    rc, _, err = _run(capsys, "report", path, "-o", tmp_path / "r.html")
    assert rc == 0, err
    html = (tmp_path / "r.html").read_text()
    assert len(html.encode()) < 2_000_000
    assert "every 100th of 200,000 samples" in html
    assert "every 100th of 200,000 pairs" in html
