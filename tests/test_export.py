"""Exports (pytest-benchmark JSON, CSV, Markdown) and the pytest plugin front end."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_benchmark.stats import Stats

from harness.core.errors import InputError
from harness.report import compare, export

DATA = Path(__file__).parent / "data"
CPU = DATA / "results-cpu.json"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cpu() -> dict:
    return json.loads(CPU.read_text())


def test_pytest_benchmark_compare_lists_every_case(tmp_path, cpu):
    out = tmp_path / "0001_harness.json"
    assert export.main(CPU, "pytest-benchmark", out) == 0
    proc = subprocess.run([str(BIN / "pytest-benchmark"), "compare", str(out)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ok = [c for c in cpu["cases"] if c["status"] == "ok"]
    for case in ok:
        for side in ("baseline", "optimized"):
            assert export.bench_name(case["id"], side) in proc.stdout
    for case in cpu["cases"]:
        if case["status"] != "ok":
            assert case["id"] not in proc.stdout  # no stats, not a benchmark


def test_pytest_benchmark_json_has_every_field_of_its_writer(cpu):
    doc = export.to_pytest_benchmark(cpu)
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert len(doc["benchmarks"]) == 2 * sum(c["status"] == "ok" for c in cpu["cases"])
    bench = doc["benchmarks"][0]
    assert set(bench) == {"group", "name", "fullname", "params", "param", "options", "extra_info", "stats"}
    assert set(bench["stats"]) == set(Stats.fields) | {"data", "iterations"}
    case = cpu["cases"][0]
    assert bench["stats"]["median"] == pytest.approx(case["baseline"]["latency"]["median"])
    assert bench["extra_info"]["memory"] == case["baseline"]["memory"]
    assert doc["machine_info"]["harness_environment"] == cpu["environment"]


def test_csv_has_a_row_per_case_failed_ones_empty(cpu):
    rows = list(csv.DictReader(io.StringIO(export.to_csv(cpu))))
    assert [r["id"] for r in rows] == [c["id"] for c in cpu["cases"]]
    oom = next(r for r in rows if r["status"] == "oom")
    assert oom["speedup"] == "" and "MemoryError" in oom["error"]
    first = rows[0]
    assert float(first["speedup"]) == pytest.approx(cpu["cases"][0]["comparison"]["speedup"])


def test_markdown_summary(cpu):
    md = export.to_markdown(cpu)
    assert "| case | verdict |" in md
    assert "1.31× slower" in md and "0/1 ❌" in md
    assert "- train-micro/zero(stage=3): **oom**" in md
    evil = json.loads(json.dumps(cpu))
    evil["cases"][0]["id"] = "a|b"
    assert "a\\|b" in export.to_markdown(evil)


def test_unknown_format_is_an_input_error():
    with pytest.raises(InputError, match="unknown export format"):
        export.main(CPU, "xml")


def test_foreign_pytest_benchmark_file_is_one_sided(tmp_path):
    doc = {"machine_info": {"node": "n", "cpu": {"brand_raw": "x"}}, "commit_info": {}, "datetime": "2026-01-01",
           "version": "5.3.1", "benchmarks": [{"group": None, "name": "test_a", "fullname": "t.py::test_a",
                                               "params": None, "param": None, "options": {}, "extra_info": {},
                                               "stats": {"median": 0.01, "data": [0.01, 0.011, 0.009]}}]}
    (tmp_path / "f.json").write_text(json.dumps(doc))
    run = export.load_run(tmp_path / "f.json")
    assert run["cases"][0]["id"] == "t.py::test_a" and "baseline" not in run["cases"][0]
    result = compare.compare([tmp_path / "f.json", tmp_path / "f.json"])
    assert [r["side"] for r in result["rows"]] == [""]


TEST_FILE = '''
import pytest

@pytest.mark.parametrize("side", ["baseline", "optimized"])
def test_ckpt(harness_case, side):
    info = harness_case("train", {"model": "nano", "batch": 2, "seq_len": 16, "steps": 2},
                        plugins=["activation_checkpointing"], side=side, rounds=3, warmup_rounds=1)
    assert info["checks"] and all(c["passed"] for c in info["checks"])
'''


@pytest.mark.slow
def test_pytest_plugin_runs_a_case_through_pytest_benchmark(tmp_path):
    (tmp_path / "test_case.py").write_text(TEST_FILE)
    out = tmp_path / "bench.json"
    # -p only while the pytest11 entry point is not installed (pytest refuses to register a module twice)
    installed = any(ep.value == "harness.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
    load = [] if installed else ["-p", "harness.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *load, "-p", "no:cacheprovider",
                           str(tmp_path / "test_case.py"), f"--benchmark-json={out}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    doc = json.loads(out.read_text())
    assert {b["extra_info"]["harness_side"] for b in doc["benchmarks"]} == {"baseline", "optimized"}
    assert all(b["extra_info"]["throughput"]["tokens_per_s"] > 0 for b in doc["benchmarks"])
    result = compare.compare([out, out])  # our compare reads what pytest-benchmark wrote
    assert len(result["rows"]) == 2


REAL = DATA / "real"


def test_real_files_export_in_every_format():
    faulty = json.loads((REAL / "faulty-cpu.json").read_text())
    rows = list(csv.DictReader(io.StringIO(export.to_csv(faulty))))
    assert [r["id"] for r in rows] == [c["id"] for c in faulty["cases"]]
    noop = rows[0]
    assert noop["throughput_unit"] == "items_per_s" and float(noop["optimized_throughput"]) > 0
    assert noop["optimized_tokens_per_s"] == ""  # items are not tokens
    md = export.to_markdown(faulty)
    assert "items/s" in md and "0/1 ❌" in md and "**oom**" in md
    doc = export.to_pytest_benchmark(faulty)
    assert {b["extra_info"]["harness_case"] for b in doc["benchmarks"]} == {"toy/noop", "toy/wrong_scale"}
    bf16 = json.loads((REAL / "bf16-weights-cpu.json").read_text())
    md = export.to_markdown(bf16)
    assert "tokens/s" in md and "sequences/s" in md and "0.40×" in md


def test_exports_carry_the_headline_of_each_kind_of_case():
    """TTFT and TPOT of a generation, served-trace percentiles and goodput: in the CSV columns and the Markdown."""
    results = json.loads((Path(__file__).parent.parent / "reports/reference/epyc-2core-inference/results.json")
                         .read_text())
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(export.to_csv(results)))}
    for case in results["cases"]:
        if case["status"] != "ok":
            continue
        for side, key in (("baseline", "baseline"), ("optimized", "metrics")):
            extra = case[key]["extra"]
            for name in ("ttft_s", "tpot_s", "ttft_p99_s", "goodput_requests_per_s"):
                if extra.get(name) is not None:
                    assert float(rows[case["id"]][f"{side}_{name}"]) == pytest.approx(extra[name])
    generation = next(c for c in results["cases"] if c["status"] == "ok" and "ttft_s" in c["metrics"]["extra"])
    served = next(c for c in results["cases"] if c["status"] == "ok" and "ttft_p99_s" in c["metrics"]["extra"])
    markdown = {line.split(" | ")[0][2:]: line for line in export.to_markdown(results).splitlines()
                if line.startswith("| ")}
    assert "TTFT " in markdown[generation["id"]] and "TPOT " in markdown[generation["id"]]
    assert "TTFT p99 " in markdown[served["id"]] and "goodput req/s " in markdown[served["id"]]


def test_a_schema_1_file_reads_as_the_current_schema_without_changing_the_input():
    from harness.core.results import SCHEMA_VERSION, validate

    path = Path(__file__).parent / "data" / "quick-schema-1.json"  # the quick reference as schema 1 wrote it
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and SCHEMA_VERSION == 2
    read = validate(raw)
    ok = [c for c in read["cases"] if c["status"] == "ok"]
    assert ok and all("optimized" in c and "metrics" not in c for c in ok)
    assert all(set(c["measurement"]["warmup_s"]) == {"baseline", "optimized"} for c in ok)
    assert all("metrics" in c for c in raw["cases"] if c["status"] == "ok")  # the input is left as it was
    assert read["schema_version"] == 2 and read["read_from_schema"] == 1
    assert validate(read) is read  # already current
