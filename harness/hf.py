"""User models: a local Hugging Face causal LM behind the interface of `harness.model.GPT`, for inference.

`load_model("hf:/path/to/dir")` (harness.reference) lands here. Offline only: the directory is what
`save_pretrained` or `huggingface-cli download NAME --local-dir DIR` wrote; nothing is downloaded.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import InputError
from harness.memory import tensor_bytes
from harness.model import matmul_params

INSTALL_HINT = "pip install 'harness[hf]'"


@dataclass
class HFArgs:
    """The shape facts the harness reads from `model.args` (as from `ModelArgs`): `n_head` is the number of
    key/value heads, so `harness.model.kv_cache_bytes(model.args, ...)` is right for GQA/MQA models too."""

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
    as in `harness.model.GPT`, over a transformers `AutoModelForCausalLM`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.hf = model
        self.args = _args_from_config(model.config)
        self.n_layer, self.n_head = self.args.n_layer, self.args.n_head
        self.head_dim, self.vocab_size = self.args.head_dim, self.args.vocab_size
        self.tokenizer = None  # the model directory's tokenizer, set by load_hf when there is one

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
        embedding is a matmul and counts, once (`harness.model.matmul_params`)."""
        return matmul_params(self) if matmul_only else sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """6N + 12 L H Q T, as `GPT.flops_per_token` (H = query heads)."""
        a = self.args
        return 6 * self.num_params(matmul_only=True) + 12 * a.n_layer * a.n_query_head * a.head_dim * seq_len


def load_hf(path: str, device="cpu", dtype: torch.dtype | None = None) -> HFCausalLM:
    """A local transformers causal LM (offline, `local_files_only=True`) in eval mode behind `HFCausalLM`."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise InputError(f"model 'hf:{path}' needs the transformers package: {INSTALL_HINT}") from e
    where = Path(path).expanduser()
    if not (where / "config.json").is_file():
        raise InputError(f"model 'hf:{path}': no config.json in {where}; hf: takes a local directory written by "
                         "save_pretrained or `huggingface-cli download NAME --local-dir DIR` (nothing is downloaded)")
    model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    adapter = HFCausalLM(model).eval()
    adapter.tokenizer = load_tokenizer(where)
    return adapter


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
