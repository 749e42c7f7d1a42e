"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes `gamma` tokens,
the target checks them all in one forward. Greedy: keep the longest prefix the target agrees with, plus the
target's own next token, so the output is the target's greedy output. Sampled: rejection sampling, which keeps
the target's distribution (no token-level invariant then)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.api import Check, GenerateAPI, Optimization, ParamError, hookimpl
from harness.core.checks import tokens_check
from harness.models.reference import model_source
from harness.workloads.generate import load_model
from harness.workloads.generate.decode import probabilities, static_cache


@dataclass
class SpeculativeParams:
    draft: str = field(default="reference:draft", metadata={"help": "draft model: preset, reference:NAME, hf:PATH"})
    gamma: int = field(default=4, metadata={"help": "draft tokens proposed per target forward"})

    def __post_init__(self) -> None:
        if not 1 <= self.gamma <= 32:
            raise ParamError("gamma", f"must be in [1, 32] (got {self.gamma})")


def greedy_accept(draft_tokens: list[int], target_tokens: list[int]) -> int:
    """How many leading draft tokens equal the target's argmax at the same position."""
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == target_tokens[n]:
        n += 1
    return n


def rejection_accept(draft_tokens: list[int], q: torch.Tensor, p: torch.Tensor, gen) -> tuple[int, int]:
    """Leviathan et al. Algorithm 1. q: draft probs [gamma, V]; p: target probs [gamma + 1, V].
    Returns (accepted count, next token drawn from the residual or, if all were accepted, from p[gamma])."""
    for i, d in enumerate(draft_tokens):
        r = torch.rand((), generator=gen, device=p.device)
        if r < torch.clamp(p[i, d] / q[i, d], max=1.0):
            continue
        residual = torch.clamp(p[i] - q[i], min=0)
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
    return len(draft_tokens), int(torch.multinomial(p[-1], 1, generator=gen))


def speculative_generate(target, draft, prompt: torch.Tensor, n: int, gamma: int, spec, gen, stats: dict,
                         caches: tuple[Any, Any], clock: list[float] | None = None) -> list[int]:
    """One sequence. prompt [1, P] -> n token ids. Static caches make rollback free: rejected positions are
    overwritten next round and masked until then. `clock` gets the time each token became available: the
    tokens a verification accepts arrive together, as a streaming client sees them."""
    tc, dc = caches
    P, dev = prompt.size(1), prompt.device
    greedy = spec.sampling == "greedy"
    pos = torch.arange(P, device=dev)
    t_logits = target(prompt, cache=tc, input_pos=pos)[0, -1]
    draft(prompt, cache=dc, input_pos=pos)
    first = t_logits.argmax() if greedy else torch.multinomial(probabilities(t_logits, spec), 1, generator=gen)
    out, draft_valid = [int(first)], P  # out[j] sits at position P + j; draft cache valid below draft_valid
    if clock is not None:
        clock.append(time.perf_counter())  # int() above waited for the device
    while len(out) < n:
        cur = P + len(out) - 1  # position of the last accepted token, not yet in the target cache
        x = torch.tensor([out[draft_valid - P:]], device=dev)
        xpos = torch.arange(draft_valid, cur + 1, device=dev)
        d_toks, q = [], []
        for _ in range(gamma):
            logits = draft(x, cache=dc, input_pos=xpos)[0, -1]
            if greedy:
                d = int(logits.argmax())
            else:
                q.append(probabilities(logits, spec))
                d = int(torch.multinomial(q[-1], 1, generator=gen))
            d_toks.append(d)
            x, xpos = torch.tensor([[d]], device=dev), xpos[-1:] + 1
        v = torch.tensor([[out[-1]] + d_toks], device=dev)
        t_logits = target(v, cache=tc, input_pos=torch.arange(cur, cur + gamma + 1, device=dev))[0]  # [gamma+1, V]
        if greedy:
            t_toks = t_logits.argmax(-1).tolist()
            n_acc = greedy_accept(d_toks, t_toks)
            nxt = t_toks[n_acc]
        else:
            n_acc, nxt = rejection_accept(d_toks, torch.stack(q), probabilities(t_logits, spec), gen)
        out += d_toks[:n_acc] + [nxt]
        if clock is not None:
            clock.extend([time.perf_counter()] * (n_acc + 1))
        draft_valid = cur + min(gamma, n_acc + 1)
        stats["drafted"] += gamma
        stats["accepted"] += n_acc
        stats["target_forwards"] += 1
    stats["target_forwards"] += 1  # the prefill
    if clock is not None:
        del clock[n:]
    return out[:n]


class SpeculativeDecoding(Optimization):
    """Replace the run's generate function by draft-then-verify decoding with static caches."""

    name = "speculative_decoding"
    requires = GenerateAPI
    description = "draft model proposes gamma tokens, target verifies in one forward; greedy output unchanged"
    Params = SpeculativeParams

    def validate(self, spec: Any, plugins: list) -> None:
        from harness.models.reference import model_facts

        target, draft = model_facts(spec.model), model_facts(self.params.draft)
        if draft.vocab_size != target.vocab_size:
            raise ParamError("draft", f"the draft's vocabulary ({draft.vocab_size} tokens) differs from the target "
                                      f"'{spec.model}' ({target.vocab_size})")
        need = spec.prompt_len + spec.new_tokens + self.params.gamma + 1  # the static caches' length
        for name, facts in ((spec.model, target), (self.params.draft, draft)):
            if facts.block_size and need > facts.block_size:
                raise ParamError("gamma", f"prompt_len + new_tokens + gamma + 1 = {need} positions exceed the "
                                          f"'{name}' context of {facts.block_size}")
        if getattr(spec, "decoder", "harness") == "library" and model_source(self.params.draft)[0] != "hf":
            raise ParamError("draft", "decoder: library runs transformers' assisted generation: the draft must be "
                                      "an hf: model too")
        if any(o.name == "batching" and o.params.mode == "batched" for o in plugins):
            raise ParamError("", "speculative_decoding decodes one sequence at a time: do not combine it with "
                                 "batching mode: batched")

    def apply(self, run: GenerateAPI) -> None:
        draft = load_model(self.params.draft, run.device, run.dtype, run.ctx.seed)  # validate(): same vocabulary
        totals = {"drafted": 0, "accepted": 0, "target_forwards": 0, "tokens": 0}  # over the timed generates
        gamma, caches = self.params.gamma, {}
        if run.spec.decoder == "library":
            self.assisted(run, draft)
            return

        def generate(run: Any, prompts: torch.Tensor, n: int) -> torch.Tensor:
            # one sequence: the run's "sequential" layout hands the rows of a batch over one at a time
            if prompts.size(0) != 1:
                raise ValueError("speculative_decoding decodes one sequence at a time: do not combine it with "
                                 "batching mode: batched")
            stats = {"drafted": 0, "accepted": 0, "target_forwards": 0}
            max_len = prompts.size(1) + n + gamma + 1
            if max_len not in caches:
                caches[max_len] = tuple(static_cache(m, 1, max_len, run.dtype, run.device) for m in (run.model, draft))
            gen = torch.Generator(device=run.device).manual_seed(run.ctx.seed)
            clock = [] if run.token_times is not None else None
            row = speculative_generate(run.model, draft, prompts, n, gamma, run.spec, gen, stats, caches[max_len],
                                       clock)
            if clock is not None:
                run.token_times.append(clock)
            if run.timed:  # the statistics describe the timed generates only (Run.timed)
                for key in stats:
                    totals[key] += stats[key]
                totals["tokens"] += n
            return torch.tensor([row], device=prompts.device)

        run.knobs.generate_fn = generate
        run.knobs.layout = "sequential"  # rows are decoded one after another: TPOT and tokens/s per sequence say so
        run.knobs.cache_kind = "static"
        run.knobs.metric_fns.append(lambda median_s: self.metrics(run, draft, totals))
        run.info.update(draft=self.params.draft, gamma=gamma, draft_params=sum(p.numel() for p in draft.parameters()))

    def assisted(self, run: Any, draft: Any) -> None:
        """transformers' assisted generation (`generate(assistant_model=draft)`) with gamma assistant tokens per
        round, a constant schedule; batch 1 only in transformers, so rows run one after another. Acceptance
        counts are the library's own and not reported; the cost ratio c is."""
        draft.hf.generation_config.num_assistant_tokens = self.params.gamma
        draft.hf.generation_config.num_assistant_tokens_schedule = "constant"
        run.knobs.assistant, run.knobs.layout, run.knobs.cache_kind = draft, "sequential", "dynamic"
        run.knobs.metric_fns.append(lambda median_s: {
            "cost_ratio_c": self.forward_time(draft, run) / self.forward_time(run.model, run)})
        run.info.update(draft=self.params.draft, gamma=self.params.gamma, assisted_generation="transformers",
                        draft_params=sum(p.numel() for p in draft.parameters()))

    @torch.inference_mode()
    def metrics(self, run: GenerateAPI, draft: Any, s: dict[str, int]) -> dict[str, Any]:
        """alpha, tokens per target forward, cost ratio c and the speedup E / (gamma c + 1) it predicts, from the
        timed generates' counts `s`."""
        g = self.params.gamma
        alpha = s["accepted"] / s["drafted"] if s["drafted"] else 0.0
        expected = g + 1 if alpha >= 1 else (1 - alpha ** (g + 1)) / (1 - alpha)
        c = self.forward_time(draft, run) / self.forward_time(run.model, run)
        return {"acceptance_rate": alpha, "drafted": s["drafted"], "accepted": s["accepted"],
                "target_forwards": s["target_forwards"],
                "tokens_per_target_forward": s["tokens"] / max(s["target_forwards"], 1),
                "expected_tokens_per_step": expected, "cost_ratio_c": c,
                "predicted_speedup_vs_cached_decode": expected / (g * c + 1)}

    @staticmethod
    def forward_time(model, run: Any, repeats: int = 7) -> float:
        """Median synchronized time of one cached decode forward (batch 1) after the prompt."""
        P = run.prompts.size(1)
        cache = static_cache(model, 1, P + 1, run.dtype, run.device)
        model(run.prompts[:1], cache=cache, input_pos=torch.arange(P, device=run.device))
        tok, pos = run.prompts[:1, -1:], torch.tensor([P], device=run.device)
        return run.median_time(lambda: model(tok, cache=cache, input_pos=pos), repeats)

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        if optimized.get("sampling", "greedy") != "greedy":
            return []  # sampled: rejection sampling keeps the target's distribution, not its tokens
        return [tokens_check("tokens_identical_to_target_greedy", baseline, optimized)]


@hookimpl
def register_optimizations(register) -> None:
    register(SpeculativeDecoding)
