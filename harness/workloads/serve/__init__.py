"""The `serve` workload: a seeded request trace served in real time with a fixed number of slots.

Both sides of a case serve the same trace (equal issue: the same requests in the same order), in wall-clock time
from the start of `step()`; an idle server waits for the next arrival. The trace (harness.workloads.serve.trace):
Poisson or bursty (gamma, vLLM's burstiness) arrivals at `rate`, or all at t = 0 (`arrivals: offline`); prompt and
output lengths uniform in their ranges or read from a JSONL / CSV file; an optional client-side `max_concurrency` (a
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
highest rate within a percentile SLO (harness.workloads.serve.search).
"""

from __future__ import annotations

from harness.core.hookspecs import hookimpl
from harness.core.workload import Workload
from harness.models.gpt import GPT
from harness.workloads.serve.checks import equal_alone, serving_checks
from harness.workloads.serve.interface import ServeAPI
from harness.workloads.serve.knobs import ServeKnobs
from harness.workloads.serve.run import ServeRun, SlotCache
from harness.workloads.serve.search import ServingSearch
from harness.workloads.serve.spec import ServeSpec

__all__ = ["ServeAPI", "ServeKnobs", "ServeRun", "ServeSpec", "ServeWorkload", "SlotCache", "equal_alone",
           "serving_checks"]


class ServeWorkload(Workload):
    """Serve a seeded request trace in real time; baseline: static batching (`knobs.scheduler`)."""

    name = "serve"
    kind = "inference"
    description = "a request trace served in real time with a fixed number of slots; step = the whole trace once"
    Spec = ServeSpec
    run_class = ServeRun
    searches = (ServingSearch,)

    def finish(self, run: ServeRun) -> None:
        if not isinstance(run.model, GPT):
            raise ValueError("the serve workload needs the harness GPT (its attention takes the slot cache)")
        run.info.update(scheduler=run.knobs.scheduler)


@hookimpl
def register_workloads(register) -> None:
    register(ServeWorkload)
