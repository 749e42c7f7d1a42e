"""Recipes (docs/recipes.md): the suite block, its design and skipped configurations, bad input, and a run."""

import json
import textwrap

import pytest

from harness.core.errors import InputError
from harness.core.suite import load_suite
from tests.conftest import FAULTY_PLUGINS, harness_cli

TRAIN = """\
name: r
device: cpu
workloads:
  nano: {type: train, model: nano, batch: 4, seq_len: 16}
cases:
  - workload: nano
    recipe:
      optimizations: OPTS
"""


def suite_with(tmp_path, optimizations: str, extra: str = "", text: str = TRAIN):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text).replace("OPTS", optimizations) + extra)
    return path


def test_a_recipe_is_one_case_with_every_configuration_the_baseline_first(tmp_path, registry):
    suite = load_suite(suite_with(tmp_path, "[mixed_precision, activation_checkpointing, "
                                            "{gradient_accumulation: {micro_batches: 2}}]"), registry)
    (case,) = suite.cases
    assert case.id == "nano/recipe(mixed_precision+activation_checkpointing+gradient_accumulation(micro_batches=2))"
    configs = case.recipe["configs"]
    assert len(configs) == 8 and configs[0] == {"label": "baseline", "levels": [0, 0, 0], "plugins": []}
    assert len({c["label"] for c in configs}) == 8
    full = next(c for c in configs if c["levels"] == [1, 1, 1])
    assert [p["name"] for p in full["plugins"]] == ["mixed_precision", "activation_checkpointing",
                                                    "gradient_accumulation"]  # the declared order
    assert full["plugins"][2]["params"]["micro_batches"] == 2
    assert case.recipe["skipped"] == [] and case.recipe["design"]["aliases"] is not None


def test_configurations_the_declared_order_forbids_are_skipped_with_the_reason(tmp_path, registry):
    (case,) = load_suite(suite_with(tmp_path, "[torch_compile, lora]"), registry).cases
    assert [c["label"] for c in case.recipe["configs"]] == ["baseline", "lora", "torch_compile"]
    (skipped,) = case.recipe["skipped"]
    assert skipped["label"] == "torch_compile+lora" and "list it before torch_compile" in skipped["reason"]
    assert "torch_compile:lora" in " ".join(case.recipe["design"]["not_estimable"])


def test_a_list_of_values_makes_one_factor_per_value_never_two_at_once(tmp_path, registry):
    (case,) = load_suite(suite_with(tmp_path, "[{mixed_precision: {dtype: [bf16, fp16]}}]"), registry).cases
    assert [f["label"] for f in case.recipe["factors"]] == ["mixed_precision(dtype=bf16)",
                                                             "mixed_precision(dtype=fp16)"]
    assert [c["label"] for c in case.recipe["configs"]] == ["baseline", "mixed_precision(dtype=fp16)",
                                                            "mixed_precision(dtype=bf16)"]
    assert case.recipe["skipped"][0]["reason"] == "two values of 'mixed_precision' at once"


@pytest.mark.parametrize("optimizations, extra, field, words", [
    ("[]", "", "cases[0].recipe.optimizations", "k >= 1"),
    ("[lora, lora]", "", "cases[0].recipe.optimizations[1]", "listed twice"),
    ("[{lora: {rank: 4, rnak: 2}}]", "", "cases[0].recipe.optimizations[0].rnak", "did you mean 'rank'"),
    ("[warp_drive]", "", "cases[0].recipe.optimizations[0]", "unknown optimization 'warp_drive'"),
    ("[lora]", "      budget_gb: -1\n", "cases[0].recipe.budget_gb", "positive number of GiB"),
    ("[lora]", "      objective: speed\n", "cases[0].recipe.objective", "tokens_per_s"),
    ("[lora]", "      budget: 1\n", "cases[0].recipe.budget", "unknown key 'budget'"),
    ("[lora]", "    plugins: [lora]\n", "cases[0].plugins", "recipe.optimizations"),
    ("[{kv_cache: {kind: static}}]", "", "cases[0].recipe.optimizations[0]", "applies to"),
])
def test_bad_recipe_input_names_file_line_and_field(tmp_path, registry, optimizations, extra, field, words):
    path = suite_with(tmp_path, optimizations, extra)
    with pytest.raises(InputError) as info:
        load_suite(path, registry)
    assert info.value.field == field and words in str(info.value), str(info.value)
    assert info.value.path == str(path) and info.value.line is not None


def test_harness_validate_exits_2_on_a_bad_recipe(tmp_path):
    path = suite_with(tmp_path, "[]")
    proc = harness_cli("validate", path)
    assert proc.returncode == 2 and f"{path}:" in proc.stderr and "Traceback" not in proc.stderr


TOY = """\
name: toy-recipe
device: cpu
measure: {min_pairs: 5, min_samples: 2, min_time_s: 0.01, block_s: 0.005, warmup_min_iters: 1, warmup_min_s: 0.01,
          warmup_max_s: 0.1, repeat: 2, timeout_s: 120}
workloads:
  toy: {type: toy, size: 32}
cases:
  - workload: toy
    recipe:
      optimizations: [noop, wrong_scale]
      budget_gb: 1
      objective: items_per_s
"""


def test_a_recipe_runs_and_a_configuration_that_breaks_its_invariant_never_wins(tmp_path):
    suite = tmp_path / "toy.yaml"
    suite.write_text(TOY)
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]  # an invariant failed, as in any case: exit 1
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    rec = case["recipe"]
    assert set(rec["configs"]) == {"baseline", "noop", "wrong_scale", "noop+wrong_scale"}
    assert rec["configs"]["noop"]["valid"] and not rec["configs"]["wrong_scale"]["valid"]
    assert "invariant failed" in rec["configs"]["noop+wrong_scale"]["invalid_reason"]
    assert rec["process_rounds"] == [len(p) for p in rec["round_times"]] and len(rec["round_times"]) == 2
    assert all(set(rd) == set(rec["configs"]) for p in rec["round_times"] for rd in p)
    assert {p["config"] for p in rec["front"]} <= {"baseline", "noop"}
    assert rec["best"]["config"] in ("baseline", "noop")
    terms = [t["term"] for t in rec["effects"]["main"]] + [t["term"] for t in rec["effects"]["interactions"]]
    assert terms == ["noop", "wrong_scale", "noop:wrong_scale"]
    assert "best within 1 GiB: " in proc.stderr + proc.stdout
    html = (out / "report.html").read_text()
    assert "Recipe" in html and "wrong_scale" in html and "invariant failed" in html


def test_budget_gb_on_the_command_line_sets_the_recipes_budget(tmp_path, registry):
    (case,) = load_suite(suite_with(tmp_path, "[lora]", "      budget_gb: 1\n"), registry,
                         overrides={"budget_gb": 0.25}).cases
    assert case.recipe["budget_gb"] == 0.25
