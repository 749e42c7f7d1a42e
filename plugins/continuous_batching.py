"""Continuous (iteration-level) batching (Orca, OSDI 2022): serve a request trace with a fixed number of slots;
after every decode step finished sequences leave and arrived requests join. The baseline side applies this
plugin with `scheduler: static`: a batch is admitted only when every slot is free and runs until its longest
request finishes. Both serve the same seeded trace (equal issue: the same requests in the same order) in real
wall-clock time from the start of `step()`; an idle server waits for the next arrival.

The trace (harness.serving): Poisson or bursty (gamma, vLLM's burstiness) arrivals at `rate`, or all at t = 0
(`arrivals: offline`); prompt and output lengths uniform in their ranges or read from a JSONL / CSV file; an
optional client-side `max_concurrency` (a request is sent only while fewer are in flight; its TTFT counts from
when it was sent, as vLLM's benchmark does).

The continuous scheduler, in Orca / vLLM terms: iteration-level scheduling with one prefill per admitted
request before the next decode iteration (no chunked prefill: a long prompt stalls the running decodes for its
prefill); admission is bounded by the free slots and, with `max_batched_tokens`, by the prompt tokens prefilled
per iteration (at least one request); each decode iteration runs only the slots in use (`decode_rows` counts
them), never a dummy row for an idle slot.

Per request: TTFT = first token time - arrival; TPOT = (finish - first token) / (output tokens - 1), none for a
one-token request; e2e = finish - arrival. Goodput = requests per second that met both SLOs (TTFT and TPOT
bounds; a one-token request has no TPOT to bound). Percentiles and means are over the requests of the timed
serves only (`run.timed`), never the correctness pass, memory probe or warm-up; one with no sample is null.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness import Check, Optimization, ParamError, hookimpl, stats
from harness.checks import TIE_RULE, diverges_at_tie, near_ties
from harness.generate import decode_one_token, generate_cached
from harness.inference import held_out
from harness.model import GPT
from harness.serving import arrival_times, read_lengths


@dataclass
class ContinuousBatchingParams:
    scheduler: Literal["continuous", "static"] = field(default="continuous", metadata={
        "help": "continuous: join/leave every decode step; static: admit a new batch only when all slots are free"})
    requests: int = field(default=16, metadata={"help": "requests in the trace"})
    rate: float = field(default=40.0, metadata={"help": "mean arrival rate, requests per second (Poisson)"})
    slots: int = field(default=4, metadata={"help": "sequences decoded together (the batch size)"})
    prompt_min: int = field(default=8, metadata={"help": "shortest prompt, tokens"})
    prompt_max: int = field(default=48, metadata={"help": "longest prompt, tokens"})
    output_min: int = field(default=4, metadata={"help": "shortest output, tokens"})
    output_max: int = field(default=64, metadata={"help": "longest output, tokens"})
    slo_ttft_s: float = field(default=0.25, metadata={"help": "goodput SLO: time to first token, seconds"})
    slo_tpot_s: float = field(default=0.02, metadata={"help": "goodput SLO: time per output token, seconds"})
    arrivals: Literal["poisson", "gamma", "offline"] = field(default="poisson", metadata={
        "help": "poisson; gamma (burstiness: < 1 burstier, > 1 more regular); offline: every request at t = 0"})
    burstiness: float = field(default=1.0, metadata={"help": "gamma shape of the inter-arrival gaps (1 = Poisson)"})
    max_concurrency: int | None = field(default=None, metadata={
        "help": "client-side cap on requests in flight (send the next only when fewer are); null: no cap"})
    lengths_file: str | None = field(default=None, metadata={
        "help": "JSONL / CSV of prompt_len, output_len per request (taken in order, cycled); null: uniform"})
    max_batched_tokens: int | None = field(default=None, metadata={
        "help": "prompt tokens prefilled per iteration at most (vLLM's max_num_batched_tokens); null: no bound"})

    def __post_init__(self) -> None:
        for name in ("requests", "slots", "prompt_min", "output_min"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        if self.prompt_max < self.prompt_min:
            raise ParamError("prompt_max", f"must be >= prompt_min ({self.prompt_min})")
        if self.output_max < self.output_min:
            raise ParamError("output_max", f"must be >= output_min ({self.output_min})")
        if self.rate <= 0:
            raise ParamError("rate", f"must be > 0 requests/s (got {self.rate})")
        if self.burstiness <= 0:
            raise ParamError("burstiness", f"must be > 0 (got {self.burstiness})")
        for name in ("max_concurrency", "max_batched_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 or null (got {getattr(self, name)})")
        if self.lengths_file is not None:
            from harness.errors import InputError
            from harness.serving import read_lengths

            try:
                lengths = read_lengths(self.lengths_file)
            except InputError as exc:
                raise ParamError("lengths_file", str(exc)) from None
            self.prompt_max = max(self.prompt_max, max(p for p, _ in lengths))
            self.output_max = max(self.output_max, max(o for _, o in lengths))


@dataclass
class Request:
    id: int
    arrival: float  # seconds after the start of serving
    prompt: torch.Tensor  # [P]
    out_len: int


def make_trace(p: ContinuousBatchingParams, seed: int, synthetic: bool, vocab: int) -> list[Request]:
    """Seeded trace (harness.serving.arrival_times): arrivals at `rate` (Poisson, gamma or offline), lengths
    uniform in their ranges or from `lengths_file` (in order, cycled). The same for both schedulers."""
    g = torch.Generator().manual_seed(seed)
    plens = torch.randint(p.prompt_min, p.prompt_max + 1, (p.requests,), generator=g).tolist()
    olens = torch.randint(p.output_min, p.output_max + 1, (p.requests,), generator=g).tolist()
    if p.lengths_file:
        lengths = read_lengths(p.lengths_file)
        plens, olens = zip(*(lengths[i % len(lengths)] for i in range(p.requests)))
    rate = math.inf if p.arrivals == "offline" else p.rate
    arrivals = arrival_times(p.requests, rate, p.burstiness if p.arrivals == "gamma" else 1.0, seed)
    tokens = held_out(p.requests, max(plens), seed + 2, synthetic, vocab)
    return [Request(i, arrivals[i], tokens[i, :plens[i]], int(olens[i])) for i in range(p.requests)]


class SlotCache:
    """KV cache with one row per serving slot, each row at its own position: k, v [L, S, H, max_len, D].
    Prefill writes one slot (`prefill_slot`); decode writes every slot at its own position."""

    def __init__(self, model: GPT, slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        a = model.args
        shape = (a.n_layer, slots, a.n_head, max_len, a.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.all_rows = torch.arange(slots, device=device)
        self.rows = self.all_rows  # the slots decoded this iteration (set by the server)
        self.positions = torch.arange(max_len, device=device)
        self.prefill_slot: int | None = None

    def visible(self, pos: torch.Tensor) -> torch.Tensor:
        """[S] positions -> [S, 1, 1, max_len] mask: a slot's query sees its keys up to its own position."""
        return (self.positions[None, :] <= pos[:, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        if self.prefill_slot is not None:  # k, v: [1, H, T, D] at positions 0..T-1 of one slot
            T = k.size(2)
            self.k[layer, self.prefill_slot, :, :T] = k[0]
            self.v[layer, self.prefill_slot, :, :T] = v[0]
            return k, v, None  # causal attention over the prompt alone, as a fresh prefill
        pos = input_pos[:, 0]  # k, v: [A, H, 1, D] for the A slots in use; input_pos: [A, 1]
        self.k[layer, self.rows, :, pos] = k[:, :, 0]
        self.v[layer, self.rows, :, pos] = v[:, :, 0]
        if len(self.rows) == len(self.all_rows):
            return self.k[layer], self.v[layer], self.visible(pos)
        return self.k[layer, self.rows], self.v[layer, self.rows], self.visible(pos)

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class TraceServer:
    """Serves the trace with `slots` slots and the chosen scheduler; greedy decoding."""

    def __init__(self, run: Any, trace: list[Request], p: ContinuousBatchingParams):
        self.run, self.trace, self.p = run, trace, p
        self.cache = SlotCache(run.model, p.slots, p.prompt_max + p.output_max, run.dtype, run.device)
        self.records: list[dict[str, float]] = []
        self.decode_steps = self.decode_rows = 0  # over the timed serves: iterations, and slots decoded in them

    @torch.inference_mode()
    def serve(self) -> list[tuple[int, list[int]]]:
        """Serve the whole trace once; returns (request id, tokens) in completion order."""
        model, S, dev, p = self.run.model, self.p.slots, self.run.device, self.p
        tokens = torch.zeros(S, 1, dtype=torch.long, device=dev)
        pos = torch.zeros(S, 1, dtype=torch.long, device=dev)
        slots: list[dict[str, Any] | None] = [None] * S
        unsent = deque(sorted(self.trace, key=lambda r: r.arrival))
        waiting: deque[tuple[Request, float]] = deque()  # sent, not yet admitted: (request, time sent)
        cap = p.max_concurrency or math.inf
        flight = {"n": 0, "freed_at": 0.0}  # requests sent and not finished; when the count last fell below cap
        done = []
        t0 = time.perf_counter()

        def finish(i: int, state: dict[str, Any]) -> None:
            req, t = state["req"], time.perf_counter() - t0
            if self.run.timed:
                self.records.append({"ttft": state["first"] - state["sent"], "e2e": t - state["sent"],
                                     "tpot": (t - state["first"]) / (req.out_len - 1) if req.out_len > 1 else None})
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
            if p.scheduler == "static" and len(free) < S:
                free = []  # static batching: the running batch must drain first
            prefilled = 0
            for i in free:
                if not waiting or (prefilled and prefilled + len(waiting[0][0].prompt) > (p.max_batched_tokens
                                                                                         or math.inf)):
                    break
                req, sent = waiting.popleft()
                prefilled += len(req.prompt)
                self.cache.prefill_slot = i
                prompt = req.prompt.to(dev)[None]
                first = int(model(prompt, cache=self.cache)[0, -1].argmax())
                self.cache.prefill_slot = None
                slots[i] = {"req": req, "out": [first], "first": time.perf_counter() - t0, "sent": sent}
                tokens[i], pos[i] = first, prompt.size(1)
                if req.out_len == 1:
                    finish(i, slots[i])
            active = [i for i, s in enumerate(slots) if s is not None]
            if not active:
                if unsent and not waiting:  # idle until the next request arrives
                    time.sleep(max(0.0, unsent[0].arrival - (time.perf_counter() - t0)))
                continue
            rows = self.cache.all_rows if len(active) == S else torch.tensor(active, device=dev)
            self.cache.rows = rows
            nxt = model(tokens[rows], cache=self.cache, input_pos=pos[rows])[:, -1].argmax(-1).tolist()  # [A]
            self.cache.rows = self.cache.all_rows
            if self.run.timed:
                self.decode_steps += 1
                self.decode_rows += len(active)
            for i, token in zip(active, nxt):
                state = slots[i]
                state["out"].append(token)
                tokens[i, 0], pos[i, 0] = token, pos[i, 0] + 1
                if len(state["out"]) == state["req"].out_len:
                    finish(i, state)
        return done

    @torch.inference_mode()
    def outputs(self) -> dict[str, Any]:
        served, seconds = self.run.synced(self.serve)
        if self.run.first_call_s is None:  # the run's first work: compile, capture, lazy init
            self.run.first_call_s = seconds
        greedy = lambda logits: logits.argmax(-1)  # noqa: E731
        model, dev = self.run.model, self.run.device
        alone = {r.id: generate_cached(model, r.prompt.to(dev)[None], r.out_len, greedy,
                                       model.new_cache("dynamic", 1, 0), decode_one_token)[0] for r in self.trace}
        ties = {r.id: near_ties(model, r.prompt.to(dev), alone[r.id], self.run.dtype).cpu() for r in self.trace}
        return {"served": served, "alone": {i: t.tolist() for i, t in alone.items()}, "ties": ties,
                "trace_ids": [r.id for r in self.trace]}

    def metrics(self, median_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.trace), "tokens_per_s_total": self.tokens() / median_s,
                               "requests_per_s": len(self.trace) / median_s, "slots": self.p.slots,
                               "scheduler": self.p.scheduler, "kv_bytes_measured": self.cache.nbytes()}
        if not self.records:
            return out
        for key in ("ttft", "tpot", "e2e"):
            values = [r[key] for r in self.records if r[key] is not None]
            for q in (50, 90, 99):
                out[f"{key}_p{q}_s"] = stats.percentile(values, q / 100) if values else None
            out[f"{key}_mean_s"] = sum(values) / len(values) if values else None
        good = sum(r["ttft"] <= self.p.slo_ttft_s and (r["tpot"] is None or r["tpot"] <= self.p.slo_tpot_s)
                   for r in self.records)
        serves = len(self.records) / len(self.trace)
        out.update(slo_attainment=good / len(self.records), goodput_requests_per_s=good / serves / median_s,
                   decode_steps_per_serve=self.decode_steps / serves,
                   slot_occupancy=self.decode_rows / max(self.decode_steps, 1) / self.p.slots)
        return out

    def tokens(self) -> int:
        return sum(r.out_len for r in self.trace)


class ContinuousBatching(Optimization):
    """Serve a request trace with an iteration-level (or, as the baseline, a static) scheduler."""

    name = "continuous_batching"
    kind = "inference"
    description = "iteration-level scheduling of a Poisson request trace vs static batches of the same trace"
    Params = ContinuousBatchingParams
    baseline_needs = ("continuous_batching serves a request trace, which a plain generate baseline does not: give "
                      "the case `baseline: [{continuous_batching: {scheduler: static}}]` with the same trace "
                      "parameters (and the same other plugins)")

    def validate(self, spec: Any, plugins: list) -> None:
        from harness.reference import model_facts

        if spec.sampling != "greedy":
            raise ParamError("", "continuous_batching serves greedy requests: set the workload's "
                                 "sampling: greedy")
        if spec.model.startswith("hf:"):
            raise ParamError("", "continuous_batching needs a harness model (a preset or reference:NAME): "
                                 "its attention takes the slot cache")
        context = model_facts(spec.model).block_size
        if self.params.prompt_max + self.params.output_max > context:
            total = self.params.prompt_max + self.params.output_max
            raise ParamError("output_max", f"prompt_max + output_max = {total}"
                                           f" exceeds the '{spec.model}' context of {context} positions")

    def apply(self, run: Any) -> None:
        if run.spec.sampling != "greedy":
            raise ValueError("continuous_batching serves greedy requests only (sampling: greedy)")
        if not isinstance(run.model, GPT):
            raise ValueError("continuous_batching needs the harness GPT (its attention takes the slot cache)")
        p = self.params
        if p.prompt_max + p.output_max > run.model.args.block_size:
            raise ParamError("output_max", f"prompt_max + output_max exceeds the context {run.model.args.block_size}")
        trace = make_trace(p, run.ctx.seed, run.spec.prompts == "synthetic", run.model.args.vocab_size)
        run.knobs.server = TraceServer(run, trace, p)
        run.units = {"tokens": sum(r.out_len for r in trace), "requests": len(trace)}
        run.info.update(scheduler=p.scheduler, slots=p.slots, requests=p.requests, rate=p.rate,
                        trace_span_s=trace[-1].arrival)

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        ids = [i for i, _ in optimized["served"]]
        expected = optimized["trace_ids"]
        checks = [
            Check("every_request_served_once", sorted(ids) == sorted(expected),
                  {"served": len(ids), "requests": len(expected), "missing": sorted(set(expected) - set(ids)),
                   "duplicated": sorted({i for i in ids if ids.count(i) > 1})}, "exact"),
            equal_alone("outputs_equal_serving_alone", optimized["served"], optimized),
        ]
        if "served" in baseline:  # the static scheduler's outputs, against the same requests served alone
            checks.append(equal_alone("baseline_scheduler_outputs_equal_serving_alone", baseline["served"], optimized))
        return checks


def equal_alone(name: str, served: list[tuple[int, list[int]]], reference: dict[str, Any]) -> Check:
    """Each served request's tokens equal the same request generated alone (batch 1), or diverge first at one of
    that generation's near-ties (harness.checks.TIE_RULE: the slot cache's masked attention over all slots
    is a different kernel from batch-1 attention, and may break a tie the other way)."""
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


@hookimpl
def register_optimizations(register) -> None:
    register(ContinuousBatching)
