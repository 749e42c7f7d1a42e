"""User models: a local Hugging Face causal LM behind the interface of `harness.models.gpt.GPT`, to generate and train.

`load_model("hf:/path/to/dir")` (harness.models.reference) lands here. Offline only: the directory is what
`save_pretrained` or `huggingface-cli download NAME --local-dir DIR` wrote; nothing is downloaded.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.device import sync
from harness.core.errors import InputError
from harness.core.memory import tensor_bytes
from harness.models.gpt import matmul_params

INSTALL_HINT = "pip install 'harness[hf]'"


@dataclass
class HFArgs:
    """The shape facts the harness reads from `model.args` (as from `ModelArgs`): `n_head` is the number of
    key/value heads, so `harness.models.gpt.kv_cache_bytes(model.args, ...)` is right for GQA/MQA models too."""

    n_layer: int
    n_head: int  # key/value heads
    head_dim: int
    vocab_size: int
    n_embd: int
    n_query_head: int
    block_size: int


def _args_from_config(config) -> HFArgs:
    n_query = config.num_attention_heads
    hidden = config.hidden_size
    return HFArgs(
        n_layer=config.num_hidden_layers,
        n_head=getattr(config, "num_key_value_heads", None) or n_query,
        head_dim=getattr(config, "head_dim", None) or hidden // n_query,
        vocab_size=config.vocab_size,
        n_embd=hidden,
        n_query_head=n_query,
        block_size=getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0),
    )


def _kwargs_for(fn, **candidates) -> dict:
    """The candidates `fn` accepts (feature detection across transformers versions)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in candidates.items() if k in params}


class HFCache:
    """A transformers cache object plus `nbytes()`, as the harness's own caches have."""

    def __init__(self, inner, kind: str):
        self.inner, self.kind = inner, kind

    def seek(self, position: torch.Tensor) -> None:
        """Make the next write land at `position` (a 0-dim tensor; no host sync). transformers >= 5 static layers
        write at their own running length rather than at the given positions; rewinding it lets a caller
        overwrite rejected positions (speculative decoding) as with the harness's StaticCache."""
        for layer in getattr(self.inner, "layers", []):
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                layer.cumulative_length.copy_(position)

    def nbytes(self) -> int:
        if hasattr(self.inner, "layers"):  # transformers >= 4.56: one object per layer
            tensors = [t for layer in self.inner.layers for t in (getattr(layer, "keys", None),
                                                                  getattr(layer, "values", None))]
        else:
            tensors = list(getattr(self.inner, "key_cache", [])) + list(getattr(self.inner, "value_cache", []))
        return tensor_bytes(t for t in tensors if isinstance(t, torch.Tensor))


class HFCausalLM(nn.Module):
    """Adapter: `forward(idx, targets=None, cache=None, input_pos=None)` and `new_cache(kind, batch, max_len)`
    as in `harness.models.gpt.GPT`, over a transformers `AutoModelForCausalLM`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.hf = model
        self.args = _args_from_config(model.config)
        self.n_layer, self.n_head = self.args.n_layer, self.args.n_head
        self.head_dim, self.vocab_size = self.args.head_dim, self.args.vocab_size
        self.tokenizer = None  # the model directory's tokenizer, set by load_hf when there is one
        self.dropout_off: list[str] = []  # config fields load_hf set to 0
        self.blocks = decoder_layers(model, self.n_layer)  # a plain list: the modules stay where the model has them

    def checkpoint_layers(self, every: int) -> list[int]:
        """Turn on the library's own activation checkpointing (non-reentrant `torch.utils.checkpoint`) on every
        `every`-th decoder layer, as a user's training script would; returns the checkpointed layers' indices.
        ValueError where the model or this transformers cannot (no support, or `every` > 1 before 5.x)."""
        hf = self.hf
        if not getattr(hf, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(hf).__name__} does not support activation checkpointing in transformers")
        if hasattr(hf, "activation_checkpointing_enable"):
            hf.activation_checkpointing_enable(**_kwargs_for(
                hf.activation_checkpointing_enable, activation_checkpointing_kwargs={"use_reentrant": False},
                every_n_layers=every))
        elif every == 1:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ValueError("every > 1 needs transformers' activation_checkpointing_enable(every_n_layers=...); "
                             "upgrade transformers or use every: 1")
        return [i for i, layer in enumerate(self.blocks) if getattr(layer, "gradient_checkpointing", False)]

    def forward(self, idx: torch.Tensor, targets=None, cache=None, input_pos=None, pad=None):
        # idx: [B, T]; input_pos: [T] absolute positions of idx (default 0..T-1); pad: [B] left padding per row
        B, T = idx.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        kwargs = {"position_ids": input_pos[None, :].expand(B, T), "cache_position": input_pos}
        if pad is not None:  # transformers' own convention: a 2-D mask over every position so far
            kwargs["position_ids"] = (input_pos[None, :] - pad[:, None]).clamp(min=0)
            seen = torch.arange(int(input_pos[-1]) + 1, device=idx.device)
            kwargs["attention_mask"] = (seen[None, :] >= pad[:, None]).long()
        if cache is not None:
            if cache.kind == "static":
                cache.seek(input_pos[0])
            kwargs.update(past_key_values=cache.inner, use_cache=True)
        else:
            kwargs["use_cache"] = False
        logits = self.hf(input_ids=idx, **kwargs).logits  # [B, T, vocab]
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def new_cache(self, kind: str, batch: int, max_len: int) -> HFCache:
        """A transformers DynamicCache ("dynamic") or StaticCache ("static"), wrapped for `forward(cache=)`."""
        import transformers

        p = next(self.hf.parameters())
        if kind == "dynamic":
            cls = transformers.DynamicCache
            return HFCache(cls(**_kwargs_for(cls.__init__, config=self.hf.config)), kind)
        if kind == "static":
            cls = getattr(transformers, "StaticCache", None)
            if cls is None:
                raise InputError(f"transformers {transformers.__version__} has no StaticCache; upgrade it "
                                 f"({INSTALL_HINT} --upgrade) or use the dynamic cache")
            kwargs = _kwargs_for(cls.__init__, config=self.hf.config, max_cache_len=max_len, max_batch_size=batch,
                                 batch_size=batch, device=p.device, dtype=p.dtype)
            cache = cls(**kwargs)
            if hasattr(cache, "early_initialization"):  # transformers >= 4.56 allocates lazily otherwise
                cache.early_initialization(batch_size=batch, num_heads=self.n_head, head_dim=self.head_dim,
                                           dtype=p.dtype, device=p.device)
            return HFCache(cache, kind)
        raise InputError(f"unknown cache kind '{kind}'; use 'dynamic' or 'static'")

    def num_params(self, matmul_only: bool = False) -> int:
        """All parameters, or (matmul_only) those outside embedding lookups: an output head tied to the input
        embedding is a matmul and counts, once (`harness.models.gpt.matmul_params`)."""
        return matmul_params(self) if matmul_only else sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """6N + 12 L H Q T, as `GPT.flops_per_token` (H = query heads)."""
        a = self.args
        return 6 * self.num_params(matmul_only=True) + 12 * a.n_layer * a.n_query_head * a.head_dim * seq_len


def decoder_layers(model: nn.Module, n_layer: int) -> list[nn.Module]:
    """The model's decoder layers, in order: the modules whose class the model names in `_no_split_modules` (the
    units accelerate and FSDP wrap), else the first ModuleList of `n_layer` modules; [] if neither is found."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if len(layers) == n_layer:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layer]
    return list(lists[0]) if lists else []


def dropout_off(config) -> list[str]:
    """Set every dropout probability of a transformers config to 0 (names holding "dropout" or "pdrop"); returns
    the names changed. Training checks compare runs to fp32 round-off, which random dropout masks would break,
    and a DDP rank's slice of the batch would not draw the masks the one-process run draws."""
    changed = []
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def load_hf(path: str, device="cpu", dtype: torch.dtype | None = None) -> HFCausalLM:
    """A local transformers causal LM (offline, `local_files_only=True`) in eval mode behind `HFCausalLM`, its
    dropout off (`dropout_off`; the adapter's `dropout_off` lists what was set to 0)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise InputError(f"model 'hf:{path}' needs the transformers package: {INSTALL_HINT}") from e
    where = Path(path).expanduser()
    if not (where / "config.json").is_file():
        raise InputError(f"model 'hf:{path}': no config.json in {where}; hf: takes a local directory written by "
                         "save_pretrained or `huggingface-cli download NAME --local-dir DIR` (nothing is downloaded)")
    config = AutoConfig.from_pretrained(where, local_files_only=True)
    changed = dropout_off(config)
    model = AutoModelForCausalLM.from_pretrained(where, config=config, local_files_only=True)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    adapter = HFCausalLM(model).eval()
    adapter.tokenizer = load_tokenizer(where)
    adapter.dropout_off = changed
    return adapter


@functools.lru_cache(maxsize=8)
def meta_model(path: str) -> nn.Module:
    """The model an hf: folder describes, built on the meta device from its config.json (no weights, no memory):
    what a suite's validation asks about (module names, checkpointing support) before any case runs.
    InputError without transformers."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise InputError(f"model 'hf:{path}' needs the transformers package: {INSTALL_HINT}") from e
    config = AutoConfig.from_pretrained(Path(path).expanduser(), local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(where: Path):
    """The model's own tokenizer if its directory has one (prompts and evaluation text are then real text in the
    model's vocabulary), else None (byte ids, which such a model reads as arbitrary tokens)."""
    from transformers import AutoTokenizer

    if not any((where / name).is_file() for name in TOKENIZER_FILES):
        return None  # transformers would otherwise build an empty one from the config alone
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return tokenizer if tokenizer("def f(x):\n")["input_ids"] else None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class TokenClock:
    """A transformers streamer that records the synchronized time each generated token (of the whole batch) is
    ready, as the harness's own clocked sampler does for ITL. The first `put` is the prompt and is skipped; a put of
    [B] is one step of the batch; a put of [1, k] (assisted generation accepting k tokens at once) is k tokens
    ready at the same time."""

    def __init__(self, times: list[float], device):
        self.times, self.device, self.prompt_seen = times, device, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        sync(self.device)  # a streaming client reads each token as it comes
        self.times.extend([time.perf_counter()] * (value.size(-1) if value.dim() == 2 else 1))

    def end(self) -> None:
        pass


LIBRARY_CACHES = {"none": {"use_cache": False}, "dynamic": {"cache_implementation": "dynamic"},
                  "static": {"cache_implementation": "static"}}


@torch.inference_mode()
def library_generate(run, prompts: torch.Tensor, n: int, pad: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' own `model.generate()` for a `generate` run with `decoder: library`: greedy, exactly `n` new
    tokens [B, n] for prompts [B, P] (left-padded by `pad` [B]: passed as its attention_mask).

    The run's knobs map to the library's options: `cache_kind` none / dynamic / static -> `use_cache=False` /
    `cache_implementation="dynamic"` / `"static"`; `compiled_decode` lets transformers compile the decode step of a
    static cache (its automatic torch.compile with CUDA graphs, CUDA only; off otherwise: `disable_compile`);
    `assistant` (a draft HFCausalLM) is assisted generation, transformers' speculative decoding. An end-of-sequence
    token does not stop a row (the EOS id given is the vocabulary size, which no token has), so every row gets n
    tokens, as with the harness's loop. The
    cache it returns becomes `run.last_cache`, so its bytes are measured as for the harness's own caches.
    """
    model: HFCausalLM = run.model
    B, P = prompts.shape
    kwargs = {"max_new_tokens": n, "do_sample": False, "num_beams": 1,
              "eos_token_id": model.args.vocab_size, "pad_token_id": 0, "return_dict_in_generate": True,
              "disable_compile": not run.knobs.compiled_decode, **LIBRARY_CACHES[run.knobs.cache_kind]}
    if pad is not None:
        kwargs["attention_mask"] = (torch.arange(P, device=prompts.device)[None, :] >= pad[:, None]).long()
    if run.knobs.assistant is not None:
        kwargs["assistant_model"] = run.knobs.assistant.hf
    if run.token_times is not None:
        times: list[float] = []
        run.token_times.append(times)
        kwargs["streamer"] = TokenClock(times, prompts.device)
    out = model.hf.generate(prompts, **kwargs)
    cache = out.past_key_values if run.knobs.cache_kind != "none" else None
    layers = getattr(cache, "layers", None)
    # the positions the cache holds: P + n - 1 when dynamic (the last token is never fed back); a static cache as
    # transformers sized it (P + n - 1 in 5.x, where the harness's own holds P + n)
    length = layers[0].keys.shape[-2] if run.knobs.cache_kind == "static" and layers else P + n - 1
    run.keep_cache(HFCache(cache, run.knobs.cache_kind) if cache is not None else None, B, length)
    return out.sequences[:, P:]


def config_facts(path: str):
    """`harness.models.reference.ModelFacts` of a local folder from its config.json, read as plain JSON (no weights, no
    transformers); ParamError("model") for a folder without a readable one."""
    from harness.core.optimization import ParamError
    from harness.models.reference import ModelFacts

    where = Path(path).expanduser()
    config = where / "config.json"
    if not config.is_file():
        raise ParamError("model", f"'hf:{path}': no config.json in {where} (hf: takes a local folder written by "
                                  "save_pretrained; nothing is downloaded)")
    try:
        cfg = json.loads(config.read_text())
        cfg = {**(cfg.get("text_config") or {}), **cfg}
        block = cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("n_ctx") or 0
        block, vocab = int(block), int(cfg.get("vocab_size") or 0)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        # not JSON, not an object, or sizes that are not whole numbers
        raise ParamError("model", f"'hf:{path}': {config} is not a readable config.json ({exc})") from None
    return ModelFacts(block, vocab, any((where / name).is_file() for name in TOKENIZER_FILES))


def load(path: str, device, dtype, seed: int = 0) -> nn.Module:
    """The `hf:` model loader: `load_hf` (random seeds do not apply: the weights are the folder's)."""
    return load_hf(path, device, dtype)
