"""`ServeRun`: a server with a fixed number of slots serving a seeded trace in real time (`ServeAPI`)."""


from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import torch

from harness.core import stats
from harness.core.checks import near_ties
from harness.core.workload import Run, RunContext
from harness.models.gpt import GPT
from harness.models.precision import resolve_dtype
from harness.workloads.generate import load_model
from harness.workloads.generate.decode import decode_one_token, generate_cached
from harness.workloads.serve.knobs import ServeKnobs
from harness.workloads.serve.search import too_few_for
from harness.workloads.serve.spec import ServeSpec
from harness.workloads.serve.trace import Request, make_trace


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


class ServeRun(Run):
    """One serving case: `step()` serves the whole trace once, with this run's `knobs` (`ServeKnobs`)."""

    ctx: RunContext
    info: dict[str, Any]
    knobs: ServeKnobs
    device: torch.device
    model: torch.nn.Module
    timed: bool

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
        from harness.models.accounting import buffer_bytes, embedding_bytes, weight_bytes

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
        few = []  # percentiles over fewer requests than they need (search.too_few_for): flagged, not hidden
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


