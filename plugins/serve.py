"""The `serve` workload: a seeded request trace served in real time with a fixed number of slots.

Both sides of a case serve the same trace (equal issue: the same requests in the same order), in wall-clock time
from the start of `step()`; an idle server waits for the next arrival. The trace (harness.traces): Poisson or
bursty (gamma, vLLM's burstiness) arrivals at `rate`, or all at t = 0 (`arrivals: offline`); prompt and output
lengths uniform in their ranges or read from a JSONL / CSV file; an optional client-side `max_concurrency` (a
request is sent only while fewer are in flight; its TTFT counts from when it was sent, as vLLM's benchmark does).

The scheduler is the run's `knobs.scheduler`. static (the baseline): a batch is admitted only when every slot is
free and runs until its longest request finishes. continuous (set by the continuous_batching optimization):
iteration-level scheduling (Orca, OSDI 2022), after every decode iteration finished requests leave and waiting
ones join. Either way, in vLLM's terms: each admitted request is prefilled whole before the next decode iteration
(a long prompt stalls the running decodes for its prefill), admission bounded by the free slots and, with
`max_batched_tokens` (vLLM's max_num_batched_tokens), by the prompt tokens prefilled per iteration (at least one
request); with `knobs.prefill_chunk` (set by the chunked_prefill optimization; vLLM's chunked prefill / Sarathi)
at most that many prompt tokens are prefilled per iteration, a long prompt spread over several iterations with
the running decodes between its chunks, each chunk attending to the slot's earlier chunks. Each decode iteration
runs only the slots whose prompt is prefilled (`decode_rows` counts them), never a dummy row for an idle slot.
Greedy decoding.

Per request: TTFT = first token time - arrival (or send time); TPOT = (finish - first token) / (output tokens - 1),
none for a one-token request; e2e = finish - arrival; ITL = the gaps between its consecutive tokens (percentiles
and the longest over every token of the timed serves: a prefill that stalls running decodes shows there).
Goodput = requests per second that met both SLOs (`slo_ttft_s`, `slo_tpot_s`; a one-token request has no TPOT to
bound). Percentiles and means are over the requests of the timed serves only (`run.timed`), never the
correctness pass, memory probe or warm-up; one with no sample is null. A `serving:` block on a case searches the
highest rate within a percentile SLO (harness.serving).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness import Check, ParamError, hookimpl, stats
from harness.checks import TIE_RULE, diverges_at_tie, near_ties
from harness.generate import decode_one_token, generate_cached
from harness.inference import load_model
from harness.model import GPT
from harness.precision import resolve_dtype
from harness.serving import too_few_for
from harness.traces import Request, make_trace, read_lengths
from harness.workload import Knobs, Run, RunContext, Workload


@dataclass
class ServeSpec:
    """Settings of a `serve` case: the model, the trace, the server's slots and the goodput SLO."""

    model: str = field(default="nano", metadata={"help": "preset name or reference:NAME (the harness GPT)"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "weights and activations"})
    prompts: Literal["text", "synthetic"] = field(
        default="text", metadata={"help": "held-out text of harness.data, or seeded random tokens"})
    requests: int = field(default=16, metadata={"help": "requests in the trace"})
    rate: float = field(default=40.0, metadata={"help": "mean arrival rate, requests per second"})
    arrivals: Literal["poisson", "gamma", "offline"] = field(default="poisson", metadata={
        "help": "poisson; gamma (burstiness: < 1 burstier, > 1 more regular); offline: every request at t = 0"})
    burstiness: float = field(default=1.0, metadata={"help": "gamma shape of the inter-arrival gaps (1 = Poisson)"})
    slots: int = field(default=4, metadata={"help": "sequences decoded together (the batch size)"})
    prompt_min: int = field(default=8, metadata={"help": "shortest prompt, tokens"})
    prompt_max: int = field(default=48, metadata={"help": "longest prompt, tokens"})
    output_min: int = field(default=4, metadata={"help": "shortest output, tokens"})
    output_max: int = field(default=64, metadata={"help": "longest output, tokens"})
    lengths_file: str | None = field(default=None, metadata={
        "help": "JSONL / CSV of prompt_len, output_len per request (taken in order, cycled; a relative path is "
                "from the current directory); null: uniform"})
    max_concurrency: int | None = field(default=None, metadata={
        "help": "client-side cap on requests in flight (send the next only when fewer are); null: no cap"})
    max_batched_tokens: int | None = field(default=None, metadata={
        "help": "prompt tokens prefilled per iteration at most (vLLM's max_num_batched_tokens); null: no bound"})
    slo_ttft_s: float = field(default=0.25, metadata={"help": "goodput SLO: time to first token, seconds"})
    slo_tpot_s: float = field(default=0.02, metadata={"help": "goodput SLO: time per output token, seconds"})

    def __post_init__(self) -> None:
        for name in ("requests", "slots", "prompt_min", "output_min"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        for name, low in (("prompt_max", "prompt_min"), ("output_max", "output_min")):
            if getattr(self, name) < getattr(self, low):
                raise ParamError(name, f"must be >= {low} ({getattr(self, low)})")
        for name in ("rate", "burstiness", "slo_ttft_s", "slo_tpot_s"):
            if getattr(self, name) <= 0:
                raise ParamError(name, f"must be > 0 (got {getattr(self, name)})")
        for name in ("max_concurrency", "max_batched_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 or null (got {getattr(self, name)})")
        widened = self.lengths_file is not None and self.widen_to_lengths_file()
        if self.model.startswith("hf:"):
            raise ParamError("model", "the serve workload needs a harness model (a preset or reference:NAME): its "
                                      "attention takes the slot cache")
        from harness.reference import model_facts

        facts = model_facts(self.model)  # ParamError("model") for an unknown name
        if facts.block_size and self.prompt_max + self.output_max > facts.block_size:
            raise ParamError("lengths_file" if widened else "output_max",
                             f"prompt_max + output_max = {self.prompt_max + self.output_max}"
                             f"{' (with the lengths file)' if widened else ''} exceeds the '{self.model}' context "
                             f"of {facts.block_size} positions")
        if self.prompts == "text" and facts.vocab_size < 256:
            raise ParamError("prompts", f"text prompts are byte ids 0..255, but '{self.model}' has a "
                                        f"{facts.vocab_size}-token vocabulary; use prompts: synthetic")

    def widen_to_lengths_file(self) -> bool:
        """prompt_max / output_max cover the file's longest rows (the slot cache is sized by them); True if
        either grew."""
        from harness.errors import InputError

        try:
            lengths = read_lengths(self.lengths_file)
        except InputError as exc:
            raise ParamError("lengths_file", str(exc)) from None
        before = self.prompt_max, self.output_max
        self.prompt_max = max(self.prompt_max, max(p for p, _ in lengths))
        self.output_max = max(self.output_max, max(o for _, o in lengths))
        return (self.prompt_max, self.output_max) != before


class SlotCache:
    """KV cache with one row per serving slot, each row at its own position: k, v [L, S, H, max_len, D].
    Prefill writes one slot (`prefill_slot`) from position `prefill_start` (a chunk of a prompt, or all of it);
    decode writes every slot in `rows` at its own position."""

    def __init__(self, model: GPT, slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        a = model.args
        shape = (a.n_layer, slots, a.n_head, max_len, a.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.all_rows = torch.arange(slots, device=device)
        self.rows = self.all_rows  # the slots decoded this iteration (set by the server)
        self.positions = torch.arange(max_len, device=device)
        self.prefill_slot: int | None = None
        self.prefill_start = 0

    def visible(self, pos: torch.Tensor) -> torch.Tensor:
        """[S] positions -> [S, 1, 1, max_len] mask: a slot's query sees its keys up to its own position."""
        return (self.positions[None, :] <= pos[:, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        if self.prefill_slot is not None:  # k, v: [1, H, T, D] at positions start..start+T-1 of one slot
            slot, start, end = self.prefill_slot, self.prefill_start, self.prefill_start + k.size(2)
            self.k[layer, slot, :, start:end] = k[0]
            self.v[layer, slot, :, start:end] = v[0]
            if start == 0:
                return k, v, None  # causal attention over the prompt alone, as a fresh prefill
            # a later chunk: its queries see the earlier chunks' keys, causally among its own (the model's mask
            # for a cache whose earlier positions come first)
            return self.k[layer, slot:slot + 1, :, :end], self.v[layer, slot:slot + 1, :, :end], None
        pos = input_pos[:, 0]  # k, v: [A, H, 1, D] for the A slots in use; input_pos: [A, 1]
        self.k[layer, self.rows, :, pos] = k[:, :, 0]
        self.v[layer, self.rows, :, pos] = v[:, :, 0]
        if len(self.rows) == len(self.all_rows):
            return self.k[layer], self.v[layer], self.visible(pos)
        return self.k[layer, self.rows], self.v[layer, self.rows], self.visible(pos)

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@dataclass
class ServeKnobs(Knobs):
    """What an optimization may set on a `ServeRun` (listed in docs/plugins.md); beyond them it may wrap or
    replace `model` (a harness GPT, whose attention takes the slot cache)."""

    scheduler: Literal["static", "continuous"] = field(default="static", metadata={
        "help": "static: admit a batch only when every slot is free; continuous: join and leave after every decode "
                "iteration (continuous_batching)"})
    prefill_chunk: int | None = field(default=None, metadata={
        "help": "prompt tokens prefilled per iteration at most, a long prompt spread over iterations with decodes "
                "between its chunks; None: each prompt whole (chunked_prefill)"})


class ServeRun(Run):
    """One serving case: `step()` serves the whole trace once, with this run's `knobs` (`ServeKnobs`)."""

    def __init__(self, spec: ServeSpec, ctx: RunContext):
        super().__init__(ctx)
        self.spec, self.device, self.dtype = spec, ctx.device, resolve_dtype(spec.dtype)
        self.model = load_model(spec.model, ctx.device, self.dtype, ctx.seed)
        self.trace = make_trace(spec, ctx.seed, self.model.args.vocab_size)
        self.knobs = ServeKnobs()
        self.cache = SlotCache(self.model, spec.slots, spec.prompt_max + spec.output_max, self.dtype, self.device)
        self.records: list[dict[str, float | None]] = []  # per request of the timed serves: ttft, tpot, e2e
        self.token_times: list[list[float]] = []  # per request of the timed serves: when each token was ready
        self.decode_steps = self.decode_rows = 0  # over the timed serves: iterations, and slots decoded in them
        self.units = {"tokens": sum(r.out_len for r in self.trace), "requests": len(self.trace)}
        self.info.update(model=spec.model, dtype=spec.dtype, slots=spec.slots, requests=spec.requests,
                         rate=spec.rate, arrivals=spec.arrivals, trace_span_s=self.trace[-1].arrival)

    def step(self) -> None:
        self.serve(self.trace)

    def warm_up(self, requests: int) -> None:
        """Serve the trace's first `requests` requests, untimed: first-call costs stay out of the percentiles."""
        self.serve(self.trace[:requests])

    @torch.inference_mode()
    def serve(self, trace: list[Request]) -> list[tuple[int, list[int]]]:
        """Serve `trace` once with `knobs.scheduler`; returns (request id, tokens) in completion order."""
        model, S, dev, spec = self.model, self.spec.slots, self.device, self.spec
        tokens = torch.zeros(S, 1, dtype=torch.long, device=dev)
        pos = torch.zeros(S, 1, dtype=torch.long, device=dev)
        slots: list[dict[str, Any] | None] = [None] * S
        unsent = deque(sorted(trace, key=lambda r: r.arrival))
        waiting: deque[tuple[Request, float]] = deque()  # sent, not yet admitted: (request, time sent)
        cap = spec.max_concurrency or math.inf
        flight = {"n": 0, "freed_at": 0.0}  # requests sent and not finished; when the count last fell below cap
        prefilling: deque[int] = deque()  # slots whose prompt is not yet all in the cache, in admission order
        chunk = self.knobs.prefill_chunk
        done = []
        t0 = time.perf_counter()

        def finish(i: int, state: dict[str, Any]) -> None:
            req, t = state["req"], time.perf_counter() - t0
            if self.timed:
                self.records.append({"ttft": state["first"] - state["sent"], "e2e": t - state["sent"],
                                     "tpot": (t - state["first"]) / (req.out_len - 1) if req.out_len > 1 else None})
                self.token_times.append(state["times"])
            done.append((req.id, state["out"]))
            slots[i] = None
            flight["n"] -= 1
            if flight["n"] == cap - 1:
                flight["freed_at"] = t

        while unsent or waiting or any(slots):
            now = time.perf_counter() - t0
            while unsent and unsent[0].arrival <= now and flight["n"] < cap:  # the client sends
                req = unsent.popleft()
                waiting.append((req, max(req.arrival, flight["freed_at"])))
                flight["n"] += 1
            free = [i for i, s in enumerate(slots) if s is None]
            if self.knobs.scheduler == "static" and len(free) < S:
                free = []  # static batching: the running batch must drain first
            admitted = 0  # prompt tokens admitted this iteration (max_batched_tokens bounds whole-prompt prefill)
            for i in free:
                if not waiting or (chunk is None and admitted and admitted + len(waiting[0][0].prompt)
                                   > (spec.max_batched_tokens or math.inf)):
                    break
                req, sent = waiting.popleft()
                admitted += len(req.prompt)
                slots[i] = {"req": req, "out": [], "sent": sent, "filled": 0}
                prefilling.append(i)
            budget = chunk or math.inf  # prompt tokens prefilled this iteration, in admission order
            while prefilling and budget > 0:
                i = prefilling[0]
                state, prompt = slots[i], slots[i]["req"].prompt
                n = min(len(prompt) - state["filled"], budget)
                logits = self.prefill(i, prompt[state["filled"]:state["filled"] + n], state["filled"])
                state["filled"], budget = state["filled"] + n, budget - n
                if state["filled"] < len(prompt):
                    continue
                prefilling.popleft()
                first = int(logits[0, -1].argmax())
                state.update(out=[first], first=time.perf_counter() - t0)
                state["times"] = [state["first"]]
                tokens[i], pos[i] = first, len(prompt)
                if state["req"].out_len == 1:
                    finish(i, state)
            active = [i for i, s in enumerate(slots) if s is not None and s["out"]]
            if not active:
                if unsent and not waiting and not prefilling:  # idle until the next request arrives
                    time.sleep(max(0.0, unsent[0].arrival - (time.perf_counter() - t0)))
                continue
            rows = self.cache.all_rows if len(active) == S else torch.tensor(active, device=dev)
            self.cache.rows = rows
            nxt = model(tokens[rows], cache=self.cache, input_pos=pos[rows])[:, -1].argmax(-1).tolist()  # [A]
            self.cache.rows = self.cache.all_rows
            if self.timed:
                self.decode_steps += 1
                self.decode_rows += len(active)
            for i, token in zip(active, nxt):
                state = slots[i]
                state["out"].append(token)
                state["times"].append(time.perf_counter() - t0)
                tokens[i, 0], pos[i, 0] = token, pos[i, 0] + 1
                if len(state["out"]) == state["req"].out_len:
                    finish(i, state)
        return done

    def prefill(self, slot: int, chunk: torch.Tensor, start: int) -> torch.Tensor:
        """Prompt tokens chunk [T] into `slot`'s cache at positions start..start+T-1; returns logits [1, T, V]."""
        self.cache.prefill_slot, self.cache.prefill_start = slot, start
        try:
            positions = torch.arange(start, start + chunk.size(0), device=self.device)
            return self.model(chunk.to(self.device)[None], cache=self.cache, input_pos=positions)
        finally:
            self.cache.prefill_slot, self.cache.prefill_start = None, 0

    @torch.inference_mode()
    def outputs(self) -> dict[str, Any]:
        """The trace served once, and each request generated alone (batch 1, dynamic cache) with its near-ties."""
        served, seconds = self.synced(lambda: self.serve(self.trace))
        if self.first_call_s is None:  # the run's first work: lazy initialisation
            self.first_call_s = seconds
        greedy = lambda logits: logits.argmax(-1)  # noqa: E731
        model, dev = self.model, self.device
        alone = {r.id: generate_cached(model, r.prompt.to(dev)[None], r.out_len, greedy,
                                       model.new_cache("dynamic", 1, 0), decode_one_token)[0] for r in self.trace}
        ties = {r.id: near_ties(model, r.prompt.to(dev), alone[r.id], self.dtype).cpu() for r in self.trace}
        return {"served": served, "alone": {i: t.tolist() for i, t in alone.items()}, "ties": ties,
                "trace_ids": [r.id for r in self.trace]}

    def memory(self) -> dict[str, int]:
        """Weights (each tensor once, embeddings included), non-persistent buffers when any, the slot cache."""
        from harness.accounting import buffer_bytes, embedding_bytes, weight_bytes

        seen: set = set()
        out = {"weights": weight_bytes(self.model, seen) + embedding_bytes(self.model, seen)}
        buffers = buffer_bytes(self.model, seen)
        return {**out, **({"buffers": buffers} if buffers else {}), "kv_cache": self.cache.nbytes()}

    def extra_metrics(self, median_s: float) -> dict[str, Any]:
        """Throughput of the median serve, and the per-request percentiles, SLO attainment and goodput of the
        timed serves (`records`)."""
        out: dict[str, Any] = {"requests": len(self.trace), "tokens_per_s_total": self.units["tokens"] / median_s,
                               "requests_per_s": len(self.trace) / median_s, "slots": self.spec.slots,
                               "scheduler": self.knobs.scheduler, "kv_bytes_measured": self.cache.nbytes(),
                               "requests_served": len(self.records)}
        if not self.records:
            return out
        few = []  # percentiles over fewer requests than they need (harness.serving.too_few_for): flagged, not hidden
        for key in ("ttft", "tpot", "e2e"):
            values = [r[key] for r in self.records if r[key] is not None]
            for q in (50, 90, 99):
                out[f"{key}_p{q}_s"] = stats.percentile(values, q / 100) if values else None
                few += [f"{key}_p{q}_s"] if values and too_few_for(len(values), q / 100) else []
            out[f"{key}_mean_s"] = sum(values) / len(values) if values else None
        out["too_few_requests"] = few
        out.update(stats.itl_percentiles(self.token_times))  # the gaps a streaming client sees, stalls included
        good = sum(r["ttft"] <= self.spec.slo_ttft_s and (r["tpot"] is None or r["tpot"] <= self.spec.slo_tpot_s)
                   for r in self.records)
        serves = len(self.records) / len(self.trace)
        out.update(slo_attainment=good / len(self.records), goodput_requests_per_s=good / serves / median_s,
                   decode_steps_per_serve=self.decode_steps / serves,
                   slot_occupancy=self.decode_rows / max(self.decode_steps, 1) / self.spec.slots)
        return out


def serving_checks(baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
    """The invariant of any scheduling change on a serve case: every request served once, and each one's tokens
    equal to the request generated alone, on the optimized side and on the baseline (`equal_alone`)."""
    ids, expected = [i for i, _ in optimized["served"]], optimized["trace_ids"]
    checks = [Check("every_request_served_once", sorted(ids) == sorted(expected),
                    {"served": len(ids), "requests": len(expected), "missing": sorted(set(expected) - set(ids)),
                     "duplicated": sorted({i for i in ids if ids.count(i) > 1})}, "exact"),
              equal_alone("outputs_equal_serving_alone", optimized["served"], optimized)]
    if "served" in baseline:  # the baseline scheduler's outputs, against the same requests served alone
        checks.append(equal_alone("baseline_scheduler_outputs_equal_serving_alone", baseline["served"], optimized))
    return checks


def equal_alone(name: str, served: list[tuple[int, list[int]]], reference: dict[str, Any]) -> Check:
    """Each served request's tokens equal the same request generated alone (batch 1), or diverge first at one of
    that generation's near-ties (harness.checks.TIE_RULE: the slot cache's masked attention over all slots, or a
    prompt prefilled in chunks, is a different kernel from batch-1 attention and may break a tie the other way)."""
    served = dict(served)
    wrong, at_ties = [], []
    for i in reference["trace_ids"]:
        got, alone = served.get(i), reference["alone"][i]
        if got == alone:
            continue
        if got is not None and len(got) == len(alone) and diverges_at_tie(
                torch.tensor(alone), torch.tensor(got), reference["ties"][i]):
            at_ties.append(i)
        else:
            wrong.append(i)
    return Check(name, not wrong, {"requests": len(reference["trace_ids"]), "differing": wrong,
                                   "diverging_at_near_ties": at_ties}, TIE_RULE)


class ServeWorkload(Workload):
    """Serve a seeded request trace in real time; baseline: static batching (`knobs.scheduler`)."""

    name = "serve"
    kind = "inference"
    description = "a request trace served in real time with a fixed number of slots; step = the whole trace once"
    Spec = ServeSpec
    run_class = ServeRun

    def finish(self, run: ServeRun) -> None:
        if not isinstance(run.model, GPT):
            raise ValueError("the serve workload needs the harness GPT (its attention takes the slot cache)")
        run.info.update(scheduler=run.knobs.scheduler)


@hookimpl
def register_workloads(register) -> None:
    register(ServeWorkload)
