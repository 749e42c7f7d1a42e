"""data: byte tokenizer, the stdlib-source corpus, its held-out split by file, batches and prompts."""

from __future__ import annotations

import pytest
import torch

from harness.models import data

SMALL = 300_000  # bytes of corpus: enough files for both splits, quick to read


def test_encode_decode_round_trip_is_bytes():
    text = "def f(x):\n    return 'héllo → ok'\n"
    ids = data.encode(text)
    assert ids.dtype == torch.long and ids.numel() == len(text.encode("utf-8"))
    assert int(ids.min()) >= 0 and int(ids.max()) < data.VOCAB_SIZE
    assert data.decode(ids) == text
    assert data.decode(ids.tolist()) == text
    assert data.decode(torch.tensor([0xE2, 0x86])) == "\ufffd"  # a cut multi-byte character does not raise
    assert data.encode("").numel() == 0


def test_corpus_is_deterministic_capped_python_source():
    text = data.corpus_text(SMALL)
    assert len(text.encode("utf-8")) <= SMALL
    assert text == data.corpus_text(SMALL)
    files = data.corpus_files(SMALL)
    assert files == sorted(files) and len(files) > 5
    assert not any(part in data.SKIP_DIRS for f in files for part in f.split("/")[:-1])
    assert text.startswith(f"# file: {files[0]}\n")
    assert "def " in text and "import " in text


def test_splits_hold_out_whole_files():
    train, val = data.splits(SMALL)
    assert train.numel() > 5 * val.numel() > 0
    assert train.numel() + val.numel() == len(data.corpus_text(SMALL).encode("utf-8"))
    train_text, val_text = data.decode(train), data.decode(val)
    val_files = [line[len("# file: "):] for line in val_text.splitlines() if line.startswith("# file: ")]
    assert val_files, "no held-out file"
    for rel in val_files:  # a held-out file never appears in training
        assert f"# file: {rel}\n" not in train_text
    t2, v2 = data.splits(SMALL)
    assert torch.equal(train, t2) and torch.equal(val, v2)


def test_get_batch_shifts_targets_and_is_seeded():
    tokens = torch.arange(1000) % 256
    x, y = data.get_batch(tokens, 4, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x[:, 0] + 16) % 256, y[:, -1])  # y is the window one token later
    x2, _ = data.get_batch(tokens, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="seq_len"):
        data.get_batch(tokens[:10], 2, 16)


def test_prompts_are_fixed_windows_of_held_out_text():
    p = data.prompts(3, 32, seed=0, max_bytes=SMALL)
    assert p.shape == (3, 32) and p.dtype == torch.long
    assert torch.equal(p, data.prompts(3, 32, seed=0, max_bytes=SMALL))
    assert not torch.equal(p, data.prompts(3, 32, seed=1, max_bytes=SMALL))
    _, val = data.splits(SMALL)
    windows = val.unfold(0, 32, 1)  # every window of the held-out split
    for row in p:
        assert (windows == row).all(dim=1).any()


def test_synthetic_tokens_are_seeded_and_in_range():
    a = data.synthetic_tokens(500, 100, seed=5)
    assert a.shape == (500,) and int(a.min()) >= 0 and int(a.max()) < 100
    assert torch.equal(a, data.synthetic_tokens(500, 100, seed=5))
    assert not torch.equal(a, data.synthetic_tokens(500, 100, seed=6))


def test_unigram_bar_is_below_uniform():
    train, val = data.splits(SMALL)
    assert data.unigram_loss(train, val) < data.uniform_loss() - 1.0  # source code is far from uniform bytes
