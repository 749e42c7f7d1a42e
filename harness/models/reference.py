"""Trained reference checkpoints (a "target" and a smaller "draft") and `load_model`, the resolver of `model:`.

A reference is a small GPT trained deterministically on the built-in corpus (`harness.models.data`) the first time it
is asked for, then cached: ``<cache>/references/<name>-<key>.pt`` (state_dict) beside a ``.json`` (config,
held-out loss, training time). `<cache>` is ``$HARNESS_CACHE_DIR`` or ``~/.cache/harness``; `key` hashes the
config, the corpus and `FORMAT_VERSION`, so changing any of them retrains instead of loading stale weights.
A cache entry that cannot be read back (truncated, edited, wrong shapes) is retrained, not a crash. A cache that
cannot be written (read-only, full, no home directory) is said before training, and the model trained is used for
the run all the same: kept in a temporary folder its case processes find through ``$HARNESS_RUN_REFERENCES``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import InputError, OutputError
from harness.core.hookspecs import hookimpl
from harness.core.optimization import ParamError
from harness.models import data, hf
from harness.models.gpt import GPT, PRESETS, ModelArgs
from harness.models.precision import resolve_dtype

FORMAT_VERSION = 1
RUN_FOLDER_ENV = "HARNESS_RUN_REFERENCES"  # references this run trained but could not cache (`_keep_for_run`)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ReferenceConfig:
    """Shape and training recipe of one reference model (byte-level vocab, trained at seq_len = block_size)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 256
    steps: int = 600
    batch: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 1337
    max_bytes: int = data.DEFAULT_MAX_BYTES
    eval_batches: int = 16  # held-out windows of block_size, 16 per batch

    def model_args(self) -> ModelArgs:
        return ModelArgs(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         vocab_size=data.VOCAB_SIZE, block_size=self.block_size)


# Budgets on a 2-core CPU: target <= ~3 min, draft ~1 min (seconds on a GPU). The draft shares the target's
# data, seed and block size, so the two learn the same easy bytes and agree often (speculative acceptance).
REFERENCES: dict[str, ReferenceConfig] = {
    "target": ReferenceConfig(n_layer=4, n_head=4, n_embd=128, steps=600, batch=16),
    "draft": ReferenceConfig(n_layer=2, n_head=4, n_embd=64, steps=600, batch=16, lr=6e-3, min_lr=6e-4),
}


def cache_dir() -> Path:
    """Where reference checkpoints live: ``$HARNESS_CACHE_DIR/references`` or ``~/.cache/harness/references``;
    OutputError when neither is set and the home directory cannot be determined."""
    root = os.environ.get("HARNESS_CACHE_DIR")
    if root:
        return Path(root) / "references"
    try:
        home = Path.home()
    except (RuntimeError, KeyError, OSError):  # HOME unset and no passwd entry for this user
        raise OutputError("no folder for the reference cache: the home directory cannot be determined (HOME is "
                          "unset and this user has no passwd entry); set HARNESS_CACHE_DIR to a writable folder",
                          field="HARNESS_CACHE_DIR") from None
    return home / ".cache" / "harness" / "references"


def _config(name: str) -> ReferenceConfig:
    if name not in REFERENCES:
        raise InputError(f"unknown reference '{name}'; known: {', '.join(REFERENCES)}")
    return REFERENCES[name]


def cache_key(cfg: ReferenceConfig) -> str:
    """Hash of the config, the corpus bytes and the format version (16 hex digits)."""
    blob = json.dumps({"config": asdict(cfg), "corpus": data.corpus_digest(cfg.max_bytes),
                       "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_paths(name: str, folder: Path | None = None) -> tuple[Path, Path]:
    """(weights .pt, report .json) of the cache entry for reference `name` with its current config, in
    `cache_dir()` (or `folder`)."""
    stem = (folder or cache_dir()) / f"{name}-{cache_key(_config(name))}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def eval_loss(model: nn.Module, tokens: torch.Tensor, seq_len: int, max_batches: int = 16, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over consecutive non-overlapping windows of `tokens`."""
    n_windows = min((tokens.numel() - 1) // seq_len, max_batches * batch)
    if n_windows < 1:
        raise ValueError(f"need more than seq_len = {seq_len} tokens, got {tokens.numel()}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, n_windows, batch):
        rows = torch.arange(start, min(start + batch, n_windows))[:, None] * seq_len
        idx = rows + torch.arange(seq_len + 1)[None, :]  # [b, T+1]
        window = tokens[idx].to(device)
        out = model(window[:, :-1])
        logits = out[0] if isinstance(out, tuple) else out  # [b, T, vocab]
        loss = F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten(), reduction="sum")
        total, count = total + float(loss), count + window[:, 1:].numel()
    return total / count


def perplexity(model: nn.Module, tokens: torch.Tensor, seq_len: int = 256, max_batches: int = 16) -> float:
    """exp(mean cross-entropy) of `model` on `tokens` (per byte for the byte-level models)."""
    return math.exp(eval_loss(model, tokens, seq_len, max_batches))


@torch.no_grad()
def agreement(draft: nn.Module, target: nn.Module, tokens: torch.Tensor, seq_len: int = 256,
              max_batches: int = 4, batch: int = 16) -> float:
    """Share of positions where the draft's greedy next token equals the target's (teacher-forced on `tokens`):
    the acceptance rate of greedy speculative decoding when drafting one token at a time. Chance is ~1/vocab."""
    n_windows = min(tokens.numel() // seq_len, max_batches * batch)
    same, count = 0, 0
    for start in range(0, n_windows, batch):
        rows = torch.arange(start, min(start + batch, n_windows))[:, None] * seq_len
        x = tokens[rows + torch.arange(seq_len)[None, :]]
        picks = [m(x.to(next(m.parameters()).device)).argmax(-1).cpu() for m in (draft, target)]
        same, count = same + int((picks[0] == picks[1]).sum()), count + x.numel()
    return same / count


def _optimizer(model: GPT, cfg: ReferenceConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matmuls and embeddings; not biases, norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def _lr(cfg: ReferenceConfig, step: int) -> float:
    if step < cfg.warmup:  # linear warm-up, then cosine decay to min_lr (nanoGPT)
        return cfg.lr * (step + 1) / cfg.warmup
    ratio = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def train_reference(name: str, device="cpu", progress: Progress | None = None) -> tuple[GPT, dict]:
    """Train reference `name` from scratch, deterministically (fixed seed, data order and steps).

    Returns the model in eval mode and a report: val_loss, unigram_loss (the context-free bar), steps,
    seconds, tokens, params. Nothing is cached here; `load_reference` does that."""
    cfg, say = _config(name), progress or _stderr
    device = torch.device(device)
    train, val = data.splits(cfg.max_bytes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GPT(cfg.model_args())  # initialised on the CPU: the same start on every device
    model.to(device).train()
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    say(f"reference {name}: training {model.num_params() / 1e6:.2f}M params, {cfg.steps} steps of "
        f"{cfg.batch}x{cfg.block_size} tokens on {device} (cached afterwards)")
    t0, last, smooth = time.perf_counter(), time.perf_counter(), None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        x, y = data.get_batch(train, cfg.batch, cfg.block_size, gen, device)  # [B, T] each
        ctx = torch.autocast("cuda", torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        now = time.perf_counter()
        if now - last > 10 or step == cfg.steps - 1:
            say(f"reference {name}: step {step + 1}/{cfg.steps} train loss {smooth:.3f} ({now - t0:.0f} s)")
            last = now
    seconds = time.perf_counter() - t0
    model.eval()
    report = {
        "name": name, "config": asdict(cfg), "format": FORMAT_VERSION, "corpus": data.corpus_digest(cfg.max_bytes),
        "val_loss": eval_loss(model, val, cfg.block_size, cfg.eval_batches), "train_loss": smooth,
        "unigram_loss": data.unigram_loss(train, val), "uniform_loss": data.uniform_loss(),
        "steps": cfg.steps, "seconds": seconds, "tokens": cfg.steps * cfg.batch * cfg.block_size,
        "params": model.num_params(), "device": str(device), "torch": torch.__version__,
    }
    say(f"reference {name}: held-out loss {report['val_loss']:.3f} nats/byte "
        f"(unigram {report['unigram_loss']:.3f}, uniform {report['uniform_loss']:.3f}) in {seconds:.0f} s")
    return model, report


def _read_cache(name: str, device) -> GPT | None:
    """The cached model from the cache, else from this run's folder (`_keep_for_run`), else None."""
    folders = [f for f in (_cache_or_none(), os.environ.get(RUN_FOLDER_ENV)) if f]
    for folder in folders:
        model = _read_entry(name, device, Path(folder))
        if model is not None:
            return model
    return None


def _cache_or_none() -> Path | None:
    try:
        return cache_dir()
    except OutputError:  # no home directory: no cache to read; `load_reference` says so before training
        return None


def _read_entry(name: str, device, folder: Path) -> GPT | None:
    pt, js = cache_paths(name, folder)
    if not (pt.exists() and js.exists()):
        return None
    try:
        report = json.loads(js.read_text())
        if report.get("sha256") != hashlib.sha256(pt.read_bytes()).hexdigest():
            raise ValueError("checksum mismatch")
        state = torch.load(pt, map_location="cpu", weights_only=True)
        model = GPT(_config(name).model_args())
        model.load_state_dict(state)
    except (OSError, EOFError, ValueError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
        _stderr(f"reference {name}: cache entry {pt} is unreadable ({type(e).__name__}: {e}); retraining")
        return None
    model.reference = report
    return model.to(device).eval()


def _write_cache(name: str, model: GPT, report: dict, folder: Path | None = None) -> None:
    """Write the entry of `name` in the cache (or `folder`); OutputError when it cannot be written."""
    from harness.core.results import ensure_dir, write_bytes, write_text

    pt, js = cache_paths(name, folder)
    ensure_dir(pt.parent)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    report = dict(report, sha256=hashlib.sha256(weights).hexdigest())
    write_bytes(pt, weights)  # weights first, then the JSON that vouches for them
    write_text(js, json.dumps(report, indent=2))
    model.reference = report


def load_reference(name: str, device="cpu", progress: Progress | None = None) -> GPT:
    """Reference `name` in eval mode, from the cache or trained now (and cached). `model.reference` holds the
    training report (val_loss, seconds, ...). A cache that cannot be written is said (a warning) before training,
    and the model is kept for this run only (`_keep_for_run`)."""
    model = _read_cache(name, device)
    if model is not None:
        return model
    problem = cache_problem()
    if problem:
        _stderr(f"warning: reference {name}: cannot cache it: {problem}; training it for this run only")
    model, report = train_reference(name, device, progress)
    model.reference = report
    try:
        if not problem:
            _write_cache(name, model, report)
    except OutputError as exc:
        problem = exc
        _stderr(f"warning: reference {name}: cannot cache it: {exc}; using it for this run only")
    if problem:
        _keep_for_run(name, model, report)
    return model.to(device).eval()


def cache_problem() -> OutputError | None:
    """Why the reference cache cannot be written (path, cause, what to do, HARNESS_CACHE_DIR named), or None."""
    from harness.core.results import ensure_dir

    try:
        ensure_dir(cache_dir())
    except OutputError as exc:
        if "HARNESS_CACHE_DIR" not in exc.message:
            exc.message += " (or set HARNESS_CACHE_DIR to a writable folder)"
        return exc
    return None


def _keep_for_run(name: str, model: GPT, report: dict) -> None:
    """Keep a model the cache refused in a temporary folder named by $HARNESS_RUN_REFERENCES (made now, removed
    at exit, unless a parent process made it): the case processes this one starts inherit the variable and load
    the model from there instead of training it again each."""
    folder = os.environ.get(RUN_FOLDER_ENV)
    try:
        if not folder:
            folder = tempfile.mkdtemp(prefix="harness-references-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            os.environ[RUN_FOLDER_ENV] = folder
        _write_cache(name, model, report, Path(folder))
    except (OSError, OutputError) as exc:
        _stderr(f"warning: reference {name}: cannot keep it for this run either ({exc}); each case process "
                "that uses it trains it again")


@dataclass(frozen=True)
class ModelFacts:
    """What a `model:` field names, read without loading weights: context length (positions), vocabulary size,
    and whether the model brings its own tokenizer (else text prompts are byte ids 0..255)."""

    block_size: int
    vocab_size: int
    tokenizer: bool = False


@dataclass(frozen=True)
class ModelLoader:
    """A source of models for a suite's `model: PREFIX:NAME`: `load(name, device, dtype, seed)` returns a module
    with the harness model interface (`forward(idx, targets=None, cache=None, input_pos=None, pad=None)`,
    `args` with block_size / vocab_size, `num_params()`; see harness.models.hf.HFCausalLM for a wrapper) in eval mode;
    `facts(name)` returns its `ModelFacts` without loading weights (ParamError("model") for a bad name)."""

    load: Callable[..., nn.Module]
    facts: Callable[[str], ModelFacts]
    help: str = ""


LOADERS: dict[str, ModelLoader] = {}  # prefix -> loader; a bare name is a preset


def register_model_loader(prefix: str, load: Callable[..., nn.Module], facts: Callable[[str], ModelFacts],
                          help: str = "") -> None:
    """Add a model source for `model: PREFIX:NAME` (the `register` of the register_model_loaders hook);
    ValueError if another loader has the prefix. Registering the same functions again (a registry loaded twice
    in one process, a plugin file imported anew) is a no-op."""
    loader = ModelLoader(load, facts, help)
    if prefix in LOADERS and _origin(LOADERS[prefix]) != _origin(loader):
        raise ValueError(f"model prefix '{prefix}:' is registered twice")
    LOADERS[prefix] = loader


def _origin(loader: ModelLoader) -> tuple[str, ...]:
    """Where a loader's functions are defined, by name: the same functions imported anew compare equal."""
    return tuple(f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', f)}" for f in (loader.load, loader.facts))


def model_source(spec: str) -> tuple[str | None, str]:
    """(prefix, name) of a suite's `model:` field, parsed the one way every module reads it: ("hf", "PATH") for
    "hf:PATH", (None, "nano") for a preset's bare name. No check that the source exists (`model_facts` does)."""
    prefix, colon, name = str(spec).partition(":")
    return (prefix, name) if colon else (None, spec)


def _split(spec: str) -> tuple[ModelLoader | None, str]:
    """The loader and name of a `model:` field: (None, spec) for a preset's bare name."""
    prefix, name = model_source(spec)
    if prefix is None:
        if spec in PRESETS:
            return None, spec
        raise ParamError("model", f"unknown model '{spec}'; use a preset ({', '.join(PRESETS)}) or "
                                  + ", ".join(f"{p}:{loader.help or 'NAME'}" for p, loader in LOADERS.items()))
    if prefix not in LOADERS:
        raise ParamError("model", f"unknown model source '{prefix}:' in '{spec}'; known: "
                                  f"{', '.join(p + ':' for p in LOADERS)} (a plugin adds one with "
                                  "register_model_loaders)")
    return LOADERS[prefix], name


def model_facts(spec: str) -> ModelFacts:
    """`ModelFacts` of a preset or of PREFIX:NAME (`LOADERS`); ParamError("model") when the name cannot be
    resolved. Used to validate a suite before any case runs."""
    loader, name = _split(spec)
    if loader is None:
        return ModelFacts(PRESETS[name].block_size, PRESETS[name].vocab_size)
    return loader.facts(name)


def load_model(spec: str, device="cpu", dtype=None, seed: int = 0) -> nn.Module:
    """Resolve a suite's `model:` field, in eval mode (call `.train()` to train): a preset name ("nano", "cpu",
    "small", ...: random init from `seed`) or PREFIX:NAME through its `ModelLoader`: "reference:NAME" (trained
    reference, cached), "hf:PATH" (a local Hugging Face causal LM, see `harness.models.hf`), or a plugin's prefix."""
    dtype = resolve_dtype(dtype)
    try:
        loader, name = _split(spec)
    except ParamError as exc:
        raise InputError(str(exc)) from None
    if loader is not None:
        try:
            return loader.load(name, device, dtype, seed)
        except ParamError as exc:  # a name the loader's facts refuse
            raise InputError(str(exc)) from None
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with dev:  # initialise in place: a `large` model is not built on the CPU first
            model = GPT(ModelArgs.from_name(name))
    model.eval()
    return model.to(dtype=dtype) if dtype is not None else model


def _reference_facts(name: str) -> ModelFacts:
    if name not in REFERENCES:
        raise ParamError("model", f"unknown reference '{name}'; known: {', '.join(REFERENCES)}")
    args = REFERENCES[name].model_args()
    return ModelFacts(args.block_size, args.vocab_size)


def _reference_load(name: str, device, dtype, seed: int) -> nn.Module:
    _reference_facts(name)
    model = load_reference(name, device)
    return model.to(dtype=dtype) if dtype is not None else model


@hookimpl
def register_model_loaders(register):
    register("reference", _reference_load, _reference_facts, f"NAME ({', '.join(REFERENCES)})")
    register("hf", hf.load, hf.config_facts, "PATH")


register_model_loaders(register_model_loader)  # core's sources, through the same hook plugins use


def main_train_reference(names: list[str], device: str = "cpu", force: bool = False) -> int:
    """`harness train-reference`: train (or, if cached, load) each reference and print the loss it reached.

    With `force` the cache entries are deleted first. With both "draft" and "target", also prints their greedy
    top-1 agreement on held-out text. Returns the exit code (2 for an unknown name); OutputError (exit 2) when
    the cache cannot be written, before anything is trained."""
    names = list(names) or list(REFERENCES)
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        print(f"error: unknown reference {', '.join(unknown)}; known: {', '.join(REFERENCES)}", file=sys.stderr)
        return 2
    problem = cache_problem()
    if problem:  # caching is this command's whole point: refuse before training
        raise problem
    models = {}
    for name in names:
        if force:
            for path in cache_paths(name):
                path.unlink(missing_ok=True)
        models[name] = model = load_reference(name, device)
        r = model.reference
        print(f"{name}: held-out loss {r['val_loss']:.3f} nats/byte (unigram {r['unigram_loss']:.3f}), "
              f"{r['params'] / 1e6:.2f}M params, {r['steps']} steps in {r['seconds']:.0f} s on {r['device']}; "
              f"{cache_paths(name)[0]}")
    if "draft" in models and "target" in models:
        _, val = data.splits(REFERENCES["target"].max_bytes)
        rate = agreement(models["draft"], models["target"], val, REFERENCES["target"].block_size)
        print(f"draft/target greedy top-1 agreement on held-out text: {rate:.1%} (chance ~{1 / data.VOCAB_SIZE:.1%})")
    return 0

