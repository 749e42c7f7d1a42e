"""reference: deterministic training, the checkpoint cache (reuse, corruption), perplexity, load_model."""

from __future__ import annotations

import pytest
import torch

from harness.core.errors import InputError
from harness.models import reference
from harness.models.reference import ReferenceConfig

TINY = ReferenceConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, steps=40, batch=8, lr=1e-2, min_lr=1e-3,
                       warmup=5, max_bytes=300_000, eval_batches=2)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """REFERENCES replaced by one tiny config, a fresh cache dir, and a count of trainings."""
    monkeypatch.setattr(reference, "REFERENCES", {"tiny": TINY, "tiny2": TINY})
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    trained = []
    real = reference.train_reference

    def counting(name, device="cpu", progress=None):
        trained.append(name)
        return real(name, device, progress=lambda msg: None)

    monkeypatch.setattr(reference, "train_reference", counting)
    return trained


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic(tiny):
    m1, r1 = reference.train_reference("tiny")
    m2, r2 = reference.train_reference("tiny")
    assert same_weights(m1, m2)
    assert r1["val_loss"] == r2["val_loss"] and r1["steps"] == TINY.steps
    assert not m1.training


def test_trained_beats_untrained_and_unigram(tiny):
    model, report = reference.train_reference("tiny")
    untrained = reference.load_model("nano", "cpu")  # any random-init byte model
    from harness.models import data

    _, val = data.splits(TINY.max_bytes)
    trained_ppl = reference.perplexity(model, val, seq_len=32, max_batches=2)
    assert trained_ppl < reference.perplexity(untrained, val, seq_len=32, max_batches=2) / 2
    assert abs(trained_ppl - torch.tensor(report["val_loss"]).exp().item()) < 1e-3 * trained_ppl
    assert report["val_loss"] < report["uniform_loss"] and report["unigram_loss"] < report["uniform_loss"]
    assert reference.agreement(model, model, val, seq_len=32, max_batches=1) == 1.0


def test_cache_is_reused(tiny):
    first = reference.load_reference("tiny")
    assert tiny == ["tiny"]
    pt, js = reference.cache_paths("tiny")
    assert pt.exists() and js.exists() and first.reference["val_loss"] > 0
    mtime = pt.stat().st_mtime_ns
    second = reference.load_reference("tiny")
    assert tiny == ["tiny"], "second load trained again"
    assert pt.stat().st_mtime_ns == mtime
    assert same_weights(first, second) and not second.training
    assert second.reference["val_loss"] == first.reference["val_loss"]


@pytest.mark.parametrize("damage", ["garbage_weights", "truncated_weights", "bad_json", "missing_json"])
def test_corrupted_cache_entry_is_retrained(tiny, damage, capsys):
    good = reference.load_reference("tiny")
    pt, js = reference.cache_paths("tiny")
    if damage == "garbage_weights":
        pt.write_bytes(b"not a checkpoint")
    elif damage == "truncated_weights":
        pt.write_bytes(pt.read_bytes()[:100])
    elif damage == "bad_json":
        js.write_text("{")
    else:
        js.unlink()
    again = reference.load_reference("tiny")
    assert tiny == ["tiny", "tiny"]
    assert same_weights(good, again)
    assert reference.load_reference("tiny") is not None and tiny == ["tiny", "tiny"]  # repaired entry is reused
    if damage != "missing_json":
        assert "retraining" in capsys.readouterr().err


def test_config_change_changes_the_cache_key(tiny, monkeypatch):
    key = reference.cache_key(TINY)
    assert reference.cache_key(ReferenceConfig(**{**TINY.__dict__, "steps": 41})) != key
    monkeypatch.setattr(reference, "FORMAT_VERSION", reference.FORMAT_VERSION + 1)
    assert reference.cache_key(TINY) != key


def test_load_model_resolves_presets_references_and_errors(tiny):
    a, b = reference.load_model("nano", "cpu"), reference.load_model("nano", "cpu")
    assert same_weights(a, b) and not a.training  # seeded random init
    assert not same_weights(a, reference.load_model("nano", "cpu", seed=1))
    ref = reference.load_model("reference:tiny", "cpu", dtype="bf16")
    assert next(ref.parameters()).dtype == torch.bfloat16 and tiny == ["tiny"]
    with pytest.raises(InputError, match="unknown model"):
        reference.load_model("nope", "cpu")
    with pytest.raises(InputError, match="unknown reference"):
        reference.load_model("reference:nope", "cpu")
    with pytest.raises(InputError, match="unknown dtype"):
        reference.load_model("nano", "cpu", dtype="fp8")


def test_main_train_reference_prints_loss_and_force_retrains(tiny, capsys):
    assert reference.main_train_reference(["tiny"], "cpu", force=False) == 0
    assert "tiny: held-out loss" in capsys.readouterr().out
    assert reference.main_train_reference(["tiny"], "cpu", force=False) == 0 and tiny == ["tiny"]
    assert reference.main_train_reference(["tiny"], "cpu", force=True) == 0 and tiny == ["tiny", "tiny"]
    assert reference.main_train_reference(["bogus"], "cpu", force=False) == 2
    assert "unknown reference" in capsys.readouterr().err
