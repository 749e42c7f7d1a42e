"""Built-in data: a byte-level tokenizer (vocab 256) and an offline corpus, the Python standard library's source.

The corpus needs no download and is the same on every machine with the same Python version: the stdlib's
``*.py`` files (tests, IDLE, demos, generated tables and vendored packages left out), sorted by relative path,
each preceded by a ``# file: <path>`` line, concatenated up to `max_bytes`. The held-out split is chosen by file
(a hash of the relative path), so validation text never appears in training, not even as a neighbouring window.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sysconfig
from pathlib import Path

import torch

VOCAB_SIZE = 256
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
VAL_PERCENT = 10  # share of files (by path hash) held out for validation
# Directories that are not "ordinary Python": tests, GUI demos, data tables generated into .py files, vendored pkgs.
SKIP_DIRS = frozenset({
    "test", "tests", "idlelib", "turtledemo", "pydoc_data", "encodings", "ensurepip", "site-packages",
    "dist-packages", "__pycache__", "__phello__",
})


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of `text` as token ids: LongTensor [N] with values in 0..255."""
    raw = text.encode("utf-8")
    if not raw:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()


def decode(ids) -> str:
    """Token ids (tensor or list, values 0..255) back to text; invalid UTF-8 sequences become U+FFFD."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().to("cpu", torch.long).flatten().tolist()
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_val(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


@functools.lru_cache(maxsize=4)
def _documents(max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """(relative path, header + source bytes) of the corpus files, in order, until `max_bytes` is reached."""
    root = stdlib_root()
    paths = sorted(
        (p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs, total = [], 0
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        raw = f"# file: {rel}\n{text}\n".encode()
        if total + len(raw) > max_bytes:
            raw = raw[: max_bytes - total]
        if raw:
            docs.append((rel, raw))
            total += len(raw)
        if total >= max_bytes:
            break
    if not docs:
        raise RuntimeError(f"no Python sources found under {root}; cannot build the built-in corpus")
    return tuple(docs)


def corpus_files(max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """Relative paths of the stdlib files in the corpus, in corpus order."""
    return [rel for rel, _ in _documents(max_bytes)]


def corpus_text(max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The whole corpus (train and held-out files, in path order), at most `max_bytes` UTF-8 bytes."""
    return b"".join(raw for _, raw in _documents(max_bytes)).decode("utf-8", errors="replace")


def corpus_digest(max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """A short hash of the corpus bytes: changes when the Python version (hence the stdlib) changes."""
    h = hashlib.sha256()
    for rel, raw in _documents(max_bytes):
        h.update(rel.encode())
        h.update(raw)
    return h.hexdigest()[:16]


def _bytes_to_ids(raw: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()


@functools.lru_cache(maxsize=4)
def _split_bytes(max_bytes: int) -> tuple[bytes, bytes]:
    docs = _documents(max_bytes)
    train = b"".join(raw for rel, raw in docs if not _is_val(rel))
    val = b"".join(raw for rel, raw in docs if _is_val(rel))
    return train, val


def splits(max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) token ids, LongTensor [N]; about 10% of the files, chosen by path hash, are held out."""
    train, val = _split_bytes(max_bytes)
    return _bytes_to_ids(train), _bytes_to_ids(val)


def get_batch(
    data: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `data` (nanoGPT's get_batch): x [B, T] and y [B, T] = x shifted by one token."""
    if data.numel() < seq_len + 1:
        raise ValueError(f"data has {data.numel()} tokens, need at least seq_len + 1 = {seq_len + 1}")
    ix = torch.randint(data.numel() - seq_len, (batch,), generator=generator)
    offsets = ix[:, None] + torch.arange(seq_len + 1)[None, :]  # [B, T+1]
    window = data.to("cpu")[offsets]
    x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def prompts(n: int, length: int, seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """`n` fixed prompts of `length` tokens cut from the held-out split: LongTensor [n, length]."""
    _, val = _split_bytes(max_bytes)
    ids = torch.frombuffer(bytearray(val), dtype=torch.uint8)  # windows first, then int64: no 8x copy of the split
    x, _ = get_batch(ids, n, length, torch.Generator().manual_seed(seed))
    return x.long()


def tokenized_split(tokenizer, split: str = "val", max_chars: int = 400_000,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """The first `max_chars` characters of a split encoded by a user model's own tokenizer (a transformers
    tokenizer): LongTensor [N]. The byte ids of `splits()` mean nothing to a model with another vocabulary."""
    key = (id(tokenizer), split, max_chars, max_bytes)
    if key not in _TOKENIZED:
        train, val = _split_bytes(max_bytes)
        text = (val if split == "val" else train)[:max_chars].decode("utf-8", errors="replace")
        _TOKENIZED[key] = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    return _TOKENIZED[key]


_TOKENIZED: dict[tuple, torch.Tensor] = {}


def train_batches(kind: str, steps: int, batch: int, seq_len: int, vocab_size: int, tokenizer=None,
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` fixed batches (x, y), each [batch, seq_len] with y = x shifted by one: seeded windows of the
    training split (`kind` "corpus", encoded by `tokenizer` when given, else bytes) or seeded uniform ids
    below `vocab_size` ("synthetic")."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "corpus":
        train = tokenized_split(tokenizer, "train") if tokenizer is not None else splits()[0]
        return [get_batch(train, batch, seq_len, generator=gen) for _ in range(steps)]
    tokens = torch.randint(0, vocab_size, (steps, batch, seq_len + 1), generator=gen)
    return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in tokens]


def synthetic_tokens(n: int, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> torch.Tensor:
    """`n` uniformly random token ids in [0, vocab_size): for workloads where only speed matters."""
    return torch.randint(vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def unigram_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int = VOCAB_SIZE) -> float:
    """Cross-entropy (nats/token) on `val` of the add-one-smoothed byte frequencies of `train`: the bar a
    trained model must clear (a model that ignores context cannot do better)."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[val].mean())


def uniform_loss(vocab_size: int = VOCAB_SIZE) -> float:
    """Cross-entropy of a uniform guess, ln(vocab_size) nats/token (an untrained model sits near it)."""
    return math.log(vocab_size)
