"""The HTML report and the cost figures, from the fixture results files (tests/data)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markupsafe import escape as html_escape

from harness.core import cost
from harness.core.errors import InputError
from harness.core.results import load
from harness.report import compare, compare_page
from harness.report.formatting import fmt_bytes, memory_saved, short_reason, verdict_text
from harness.report.page import render_report, write_report

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load(DATA / "results-cpu.json")  # schema 1, read as the current schema


@pytest.fixture(scope="module")
def gpu() -> dict:
    return load(DATA / "results-gpu.json")  # schema 1, read as the current schema


@pytest.fixture(scope="module")
def cpu_html(cpu) -> str:
    return render_report(cpu)


def test_summary_lists_every_case_with_verdict_and_interval(cpu, cpu_html):
    for case in cpu["cases"]:
        assert case["id"] in cpu_html
    for case in (c for c in cpu["cases"] if c["status"] == "ok"):
        cmp = case["comparison"]
        assert verdict_text(cmp) in cpu_html
        assert f"[{cmp['ci95'][0]:.2f}, {cmp['ci95'][1]:.2f}]" in cpu_html


def test_slower_optimization_is_labelled_slower():
    cmp = {"speedup": 0.5, "ci95": [0.48, 0.52], "verdict": "slower"}
    assert verdict_text(cmp) == "2.00× slower"
    assert verdict_text({"speedup": 1.6, "ci95": [1.5, 1.7], "verdict": "faster"}) == "1.60× faster"
    assert verdict_text({"speedup": 1.02, "ci95": [0.9, 1.1], "verdict": "no significant difference"}) == \
        "no significant difference"


def test_inconclusive_verdict_text_and_reason():
    busy = {"speedup": 4.9, "ci95": [4.8, 5.0], "verdict": "inconclusive", "reason": "machine busy: foreign CPU 23%"}
    assert verdict_text(busy) == "inconclusive"  # never "4.90× faster" while the machine was busy
    assert verdict_text({"speedup": None, "ci95": None, "verdict": "inconclusive", "reason": "no pairs timed"}) == \
        "inconclusive"
    wide = "interval [0.87, 1.05] too wide: it neither excludes 1 by the 5% minimum effect nor lies within [0.91, 1.10]"
    assert short_reason(wide) == "interval [0.87, 1.05] too wide"
    assert short_reason("machine busy: foreign CPU 23% of 2 cores") == "machine busy: foreign CPU 23% of 2 cores"
    assert short_reason("machine busy: foreign CPU 23% of 2 cores; 1 other process(es) computing on the GPU") == \
        "machine busy: foreign CPU 23% of 2 cores"
    assert short_reason("first run: machine busy: foreign CPU 23% of 2 cores") == "first run: machine busy"
    assert short_reason(None) == ""


def svg_of(html: str, start: str) -> ET.Element:
    """The first inline <svg> after `start` in the page, parsed."""
    i = html.index("<svg", html.index(start))
    return ET.fromstring(html[i:html.index("</svg>", i) + len("</svg>")])


def svg_text(svg: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")]


def by_id(svg: ET.Element, prefix: str) -> list[ET.Element]:
    return [e for e in svg.iter() if (e.get("id") or "").startswith(prefix)]


def test_forest_plot_has_a_row_per_measured_case_coloured_by_verdict(cpu, cpu_html):
    assert cpu_html.index('id="forest"') < cpu_html.index("<table class=\"sortable\">")  # at the top of Summary
    forest = svg_of(cpu_html, 'id="forest"')
    ok = [c for c in cpu["cases"] if c["status"] == "ok"]
    rows = by_id(forest, "forest-")
    assert len(rows) == len(ok) == 8
    for i, (row, case) in enumerate(zip(rows, ok)):  # one marker group per case, in page order, named by verdict
        assert row.get("id").startswith(f"forest-{i}-{case['comparison']['verdict'].replace(' ', '-')}")
    labels = svg_text(forest)
    for case in ok:
        assert any(t.startswith(case["id"]) for t in labels), case["id"]
        lo, hi = case["comparison"]["ci95"]
        assert f"{case['comparison']['speedup']:.2f}× [{lo:.2f}, {hi:.2f}]" in labels
    for case in cpu["cases"]:
        if case["status"] != "ok":  # failed cases have no speedup: not in the plot
            assert not any(t.startswith(case["id"]) for t in labels)
    assert "no-difference band 0.91–1.10" in labels  # the equivalence band, from comparison.equivalence
    assert {"faster", "slower", "inconclusive", "no significant difference"} <= set(labels)  # the legend


def test_forest_plot_marks_the_busy_case(cpu, cpu_html):
    forest = svg_of(cpu_html, 'id="forest"')
    ok = [c for c in cpu["cases"] if c["status"] == "ok"]
    busy = [i for i, c in enumerate(ok) if c["measurement"]["foreign_load"]["busy"]]
    assert len(busy) == 1 and ok[busy[0]]["id"] == "decode-nano(batch=16)/kv_cache"
    marked = by_id(forest, "forest-")
    assert [i for i, e in enumerate(marked) if e.get("id").endswith("-busy")] == busy
    dot = next(marked[busy[0]].iter("{http://www.w3.org/2000/svg}use"))
    assert "fill: #ffffff" in dot.get("style")  # hollow
    assert "fill: #ffffff" not in next(marked[0].iter("{http://www.w3.org/2000/svg}use")).get("style")
    assert "decode-nano(batch=16)/kv_cache  · busy" in svg_text(forest)
    assert "machine busy: verdict withheld" in svg_text(forest)


def test_inconclusive_cases_show_their_reason(cpu, cpu_html):
    by_case = {c["id"]: c for c in cpu["cases"]}
    wide = by_case["train-nano/fused_adamw"]["comparison"]
    busy = by_case["decode-nano(batch=16)/kv_cache"]["comparison"]
    assert wide["verdict"] == busy["verdict"] == "inconclusive"
    assert wide["reason"].startswith("interval [") and busy["reason"].startswith("machine busy: foreign CPU")
    summary = cpu_html[cpu_html.index('id="summary"'):cpu_html.index('id="environment"')]
    cases = cpu_html[cpu_html.index('id="cases"'):cpu_html.index('id="failed"')]
    for cmp in (wide, busy):
        reason = str(html_escape(cmp["reason"]))
        assert f'title="{reason}"><span class="inconclusive">inconclusive</span>' in summary  # whole, as a tooltip
        assert f'<span class="muted">{html_escape(short_reason(cmp["reason"]))}</span>' in summary
        assert f'<span class="reason">{reason}</span>' in cases  # whole, in the case's detail
    assert summary.count('class="inconclusive">inconclusive</span>') == 2
    assert ".inconclusive { color:" in cpu_html  # its own colour


def test_case_detail_shows_the_pairs_and_the_foreign_load(cpu, cpu_html):
    ok = [c for c in cpu["cases"] if c["status"] == "ok"]
    i = next(j for j, c in enumerate(cpu["cases"]) if c["id"] == "decode-nano(batch=16)/kv_cache")
    case = cpu["cases"][i]
    load = case["measurement"]["foreign_load"]
    section = cpu_html[cpu_html.index(f'id="case-{i}"'):]
    section = section[:section.index("</section>")]
    assert f"{100 * load['foreign_cpu']:.1f}%" in section and "load average (1 min)" in section
    assert "Advice: the case&#39;s 2 threads shared cores" in section  # foreign_load.advice
    assert "stopped by</th><td>minimums" in section
    orders = case["measurement"]["order"]
    assert f"({orders.count('BO')}× BO, {orders.count('OB')}× OB)" in section
    pairs = svg_of(section, '<div class="charts">')
    labels = svg_text(pairs)
    assert "pair (time order)" in labels and "foreign CPU ≥ 10%" in labels
    ring = by_id(pairs, f"pairs{i}-busy")
    hot = sum(x >= load["threshold"] for x in load["per_pair"])
    assert 0 < hot < len(load["per_pair"]) and len(list(ring[0].iter("{http://www.w3.org/2000/svg}use"))) == hot
    # a quiet case: its pair chart rings nothing, and every case's chart is there
    assert 'id="pairs0-busy"' not in cpu_html
    assert cpu_html.count("pair (time order)") == len(ok)
    summary = cpu_html[cpu_html.index('id="summary"'):cpu_html.index('id="environment"')]
    assert f"{100 * load['foreign_cpu']:.1f}% busy</td>" in summary  # the summary's foreign CPU column
    measured = cpu_html[cpu_html.index('id="measured"'):]
    assert measured.count("paired blocks, random order") == len(ok)


def test_definitions_state_the_paired_design(cpu_html):
    assert "<dt>Foreign CPU</dt>" in cpu_html
    assert "exp(median of log per-pair ratios)" in cpu_html and "cluster bootstrap" in cpu_html


def test_old_results_render_with_per_round_figures():
    """A reference run from before the paired design: rounds, per_round ratios, three verdicts, no foreign load."""
    old = json.loads((REPORTS / "reference" / "xeon-2core-quick" / "results.json").read_text())
    assert all("per_round" in c["comparison"] and "equivalence" not in c["comparison"] for c in old["cases"])
    html = render_report(old)
    forest = svg_of(html, 'id="forest"')
    assert len(by_id(forest, "forest-")) == len(old["cases"])
    assert not any(e.get("id").endswith("-busy") for e in by_id(forest, "forest-"))
    assert "no-difference band 0.91–1.10" in svg_text(forest)  # from min_effect
    assert html.count("round (time order)") == len(old["cases"])  # a per-round chart in each case
    assert "pair (time order)" not in html
    first = svg_of(html, 'id="case-0"')
    ratios = old["cases"][0]["comparison"]["per_round"]
    assert len(list(first.iter("{http://www.w3.org/2000/svg}use"))) >= len(ratios)
    assert html.count("not recorded (a file from before the paired design)") == len(old["cases"])
    assert "3 rounds</td>" in html and "interleaved B O" in html
    summary = html[html.index('id="summary"'):html.index('id="environment"')]
    assert summary.count('data-v="-1">n/a</td>') == len(old["cases"])  # foreign CPU: not measured then
    assert 'class="inconclusive"' not in html


def test_comparison_page_shows_inconclusive_with_its_reason(tmp_path):
    """The CPU fixture's busy case makes its comparison with the GPU run inconclusive: coloured, with a reason."""
    result = compare.compare([DATA / "results-cpu.json", DATA / "results-gpu.json"])
    row = next(r for r in result["rows"] if r["case"] == "decode-nano(batch=16)/kv_cache" and r["side"] == "optimized")
    assert row["versus"][1]["verdict"] == "inconclusive"
    html = compare_page.render_compare(result)
    assert '<span class="inconclusive">' in html
    assert str(html_escape(row["versus"][1]["reason"])) in html


def test_sections_failed_cases_warnings_and_how_measured(cpu, cpu_html):
    for section in ("Summary", "Environment", "Failed cases", "Warnings", "How measured", "Definitions", "Cost"):
        assert f">{section}</h2>" in cpu_html
    assert "MemoryError: could not allocate 1.5 GiB" in cpu_html  # the oom case's reason
    assert "noisy: IQR/median" in cpu_html
    assert "0/1 passed" in cpu_html  # the quantization case's failed check
    assert "FAILED" in cpu_html
    for term in ("TTFT", "TPOT", "ITL", "MFU", "MBU"):
        assert f"<dt>{term}</dt>" in cpu_html


def test_charts_are_inline_svg_and_the_page_loads_nothing(cpu, cpu_html):
    ok = [c for c in cpu["cases"] if c["status"] == "ok"]
    # a per-pair, a latency and a memory chart per ok case, the summary's forest plot, and one throughput-vs-batch
    # curve (kv_cache at batch 1, 4, 16)
    assert cpu_html.count("<svg") == 3 * len(ok) + 1 + 1
    assert "Throughput vs batch" in cpu_html
    assert "default-src 'none'" in cpu_html
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(\s*['\"]?http", cpu_html)
    assert "<text" in cpu_html  # svg.fonttype none: text stays text, no embedded font


def test_warmup_per_side_is_shown(gpu):
    assert "baseline 410 ms, optimized 520 ms" in render_report(gpu)


def test_no_batch_curve_without_a_batch_sweep(gpu):
    one = copy.deepcopy(gpu)
    one["cases"] = [c for c in one["cases"] if "batch=4" not in c["id"] and "batch=16" not in c["id"]]
    assert "Throughput vs batch" not in render_report(one)


def test_strings_from_suites_plugins_and_errors_are_escaped(cpu):
    bad = copy.deepcopy(cpu)
    evil = "<script>alert(1)</script>"
    bad["suite"]["name"] = evil
    bad["cases"][4]["error"] = evil
    bad["cases"][0]["warnings"] = [evil]
    bad["cases"][0]["checks"][0]["name"] = evil
    html = render_report(bad)
    assert evil not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4


def test_write_report_beside_results_atomically(tmp_path, cpu):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(cpu))
    out = write_report(results)
    assert out == tmp_path / "report.html"
    assert out.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results.json"]  # no temp file left


def test_bad_results_file_is_an_input_error(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    (tmp_path / "y.json").write_text('{"schema_version": 1, "cases": [')
    with pytest.raises(InputError, match="not a harness results file"):
        write_report(tmp_path / "x.json")
    with pytest.raises(InputError, match="not valid JSON") as e:
        write_report(tmp_path / "y.json")
    assert e.value.line == 1
    with pytest.raises(InputError, match="cannot read"):
        write_report(tmp_path / "missing.json")


def test_report_imports_no_torch():
    code = ("import sys, json; from harness.report.page import render_report; "
            "from harness.report import compare, export; from harness.core import cost; "
            f"render_report(json.load(open({str(DATA / 'results-gpu.json')!r}))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cost_formulas(gpu):
    case = gpu["cases"][0]
    side = case["optimized"]
    tps = side["throughput"]["tokens_per_s"]
    c = cost.side_cost(side, 3.6)
    assert c["usd_per_1m_tokens"] == pytest.approx(3.6 / (3600 * tps) * 1e6)
    assert c["usd_per_1b_tokens"] == pytest.approx(1000 * c["usd_per_1m_tokens"])
    assert c["usd_per_step"] == pytest.approx(3.6 / 3600 * side["latency"]["median"])
    tokens_per_step = tps * side["latency"]["median"]
    assert c["joules_per_token"] == pytest.approx(side["energy"]["joules_per_step"] / tokens_per_step)
    assert c["kwh_per_1m_tokens"] == pytest.approx(c["joules_per_token"] * 1e6 / 3.6e6)


def test_price_lookup_and_unknown_device(cpu, gpu, tmp_path):
    assert cost.price_for(cpu["environment"]) is None  # a CPU has no example price: n/a, never a guess
    assert "Cost: n/a" in render_report(cpu)
    assert cost.price_for(cpu["environment"], 0.5) == (0.5, "given by the user")
    price, source = cost.price_for(gpu["environment"])
    assert price == cost.EXAMPLE_PRICES["H100"] and "example" in source
    prices = tmp_path / "prices.yaml"
    prices.write_text("H100: 4.0\ncpu: 0.1\n")
    table = cost.load_prices(prices)
    assert cost.price_for(gpu["environment"], prices=table)[0] == 4.0
    assert cost.price_for(cpu["environment"], prices=table)[0] == 0.1
    prices.write_text("H100: cheap\n")
    with pytest.raises(InputError, match="positive number"):
        cost.load_prices(prices)


def test_training_vs_inference_breakeven(gpu):
    b = cost.training_vs_inference(gpu, 2.0, train_tokens=1e9)
    train_tps = max(c[k]["throughput"]["tokens_per_s"] for c in gpu["cases"] if c["kind"] == "training"
                    for k in ("baseline", "optimized"))
    qps = max(c[k]["throughput"]["samples_per_s"] for c in gpu["cases"] if c["kind"] == "inference"
              for k in ("baseline", "optimized"))
    assert b["training_bill_usd"] == pytest.approx(2.0 / (3600 * train_tps) * 1e9)
    assert b["usd_per_query"] == pytest.approx(2.0 / (3600 * qps))
    assert b["breakeven_queries"] == pytest.approx(b["training_bill_usd"] / b["usd_per_query"])
    assert cost.training_vs_inference(gpu, None) is None
    html = render_report(gpu)
    assert "Training vs inference" in html and "example on-demand price" in html


def test_fmt_bytes_uses_binary_units():
    assert fmt_bytes(2**30) == "1 GiB"
    assert fmt_bytes(3 * 2**20) == "3 MiB"


# ---- real files written by harness/core/runner.py + harness/core/worker.py (tests/data/real) ----

REAL = DATA / "real"


@pytest.fixture(scope="module")
def faulty() -> dict:
    return load(REAL / "faulty-cpu.json")  # schema 1, read as the current schema


@pytest.fixture(scope="module")
def bf16() -> dict:
    return load(REAL / "bf16-weights-cpu.json")


def test_real_faulty_run_renders_every_case_and_failure(faulty):
    html = render_report(faulty)
    for case in faulty["cases"]:
        assert case["id"] in html
        assert case["log"] in html  # where to look when a case failed
        if case["status"] != "ok":
            assert html_escape(case["error"].splitlines()[0]) in html
    assert "177,746 → 178,380 items/s" in html  # the toy workload counts items, not tokens
    assert "ok, invariant FAILED" in html and "0/1 passed" in html
    assert "baseline 10 ms, optimized 10 ms" in html  # warm-up recorded per side


def test_real_tiny_cpu_peaks_are_not_reported_as_savings(faulty):
    noop = faulty["cases"][0]
    assert noop["comparison"]["memory_ratio"] < 0.01  # this file still carries a ratio of two unresolved peaks
    assert memory_saved(noop) is None
    assert "saves" not in render_report(faulty)
    big = copy.deepcopy(noop)
    big["baseline"]["memory"]["peak_bytes"], big["optimized"]["memory"]["peak_bytes"] = 40 * 2**20, 30 * 2**20
    big["comparison"]["memory_ratio"] = 0.75
    assert memory_saved(big) == (10 * 2**20, 0.25)
    big["comparison"]["memory_ratio"] = None  # the worker said: not resolved
    assert memory_saved(big) is None


def test_real_generate_run_shows_all_units_and_derived_metrics(bf16):
    html = render_report(bf16)
    assert "2.50× slower" in html
    assert "111 → 44.2 tokens/s" in html and "6.92 → 2.76 sequences/s" in html
    assert "46.3 MiB/s" in html  # achieved_bandwidth_bytes_s is a bandwidth, not a time
    assert "uses 46.1 MiB more" in html


def test_minimal_schema_conformant_case_renders(bf16):
    r = copy.deepcopy(bf16)
    case = r["cases"][0]
    for key in ("note", "log", "processes", "checks", "warnings", "measurement"):
        case.pop(key)
    case["comparison"]["memory_ratio"] = None
    for side in (case["baseline"], case["optimized"]):
        side.update(energy=None, extra={}, info={}, memory={"peak_bytes": None, "source": "cpu_vmhwm"})
        side.pop("threads"), side.pop("distributed"), side["latency"].pop("p90")
    html = render_report(r)
    assert "gen/bf16_weights" in html and "2.50× slower" in html


def test_cost_is_quoted_per_the_workloads_unit(faulty, bf16):
    items = cost.side_cost(faulty["cases"][0]["optimized"], 3.6)
    rate = faulty["cases"][0]["optimized"]["throughput"]["items_per_s"]
    assert items["unit"] == "items" and items["usd_per_1m_units"] == pytest.approx(3.6 / (3600 * rate) * 1e6)
    assert items["usd_per_1m_tokens"] is None  # items are not tokens
    tokens = cost.side_cost(bf16["cases"][0]["optimized"], 3.6)
    assert tokens["unit"] == "tokens" and tokens["usd_per_1m_tokens"] == tokens["usd_per_1m_units"]
    html = render_report(faulty, price_per_hour=3.6)
    assert "per 1M items" in html


def test_breakeven_counts_generated_sequences_as_queries(bf16):
    r = copy.deepcopy(bf16)
    train = copy.deepcopy(r["cases"][0])
    train.update(id="train", kind="training")
    r["cases"].append(train)
    b = cost.training_vs_inference(r, 3.6)
    assert b["query_unit"] == "sequences"
    assert b["queries_per_s"] == r["cases"][0]["baseline"]["throughput"]["sequences_per_s"]


def test_report_cli_renders_real_file(tmp_path):
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(REAL / "faulty-cpu.json"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "toy/wrong_scale" in out.read_text()


REPORTS = Path(__file__).resolve().parent.parent / "reports"


@pytest.mark.parametrize("path", sorted(REPORTS.glob("**/results.json")), ids=lambda p: p.parent.name)
def test_committed_reference_reports_render(path):
    results = json.loads(path.read_text())
    html = render_report(results)
    assert "<h2 id=\"summary\">Summary</h2>" in html
    for case in results["cases"]:
        assert case["status"] == "ok" and all(check["passed"] for check in case["checks"]), case["id"]
        assert case["id"].replace("<", "&lt;") in html
