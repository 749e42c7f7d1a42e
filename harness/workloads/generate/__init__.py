"""The `generate` workload: prompts in, exactly `new_tokens` tokens out, with the parts plugins replace.

Metric definitions (stated once; the report shows them):
  e2e: one `step()`, a whole generate (prefill + decode) of the batch, synchronized wall clock (`wall_sync`).
  TTFT (time to first token): a generate of one token with the same model, cache and generate function, i.e.
    the prefill plus the first sampling; measured separately in `extra_metrics` (synchronized perf_counter,
    median of 3 calls after the timed samples), not carved out of the e2e samples.
  TPOT (time per output token) = (e2e - TTFT) / (new_tokens - 1), the mean gap between a sequence's tokens.
  ITL (inter-token latency) percentiles: the gaps between consecutive tokens of a sequence as a streaming client
    sees them (synchronized after every token), from one extra generate after the timed samples; their tail
    shows stalls that TPOT averages away. p99 only with >= 100 gaps.
  tokens/s total = batch x new_tokens / e2e; tokens/s per sequence = new_tokens / (the time one sequence took:
    e2e when the batch runs together, e2e / batch when sequences run one after another).
  weight bytes (harness.models.accounting): parameters and persistent buffers outside `nn.Embedding` modules, each
    tensor once (gpt-fast); quantized weights count their packed int8 bytes plus scales.
  KV bytes moved per decode step (`harness.models.accounting.kv_step_bytes`), per sequence decoded together: a static
    cache is read whole (attention over all max_len positions, later ones masked); a dynamic cache is read and
    rewritten by `torch.cat` (L positions read, L + 1 written) and then read by attention (L + 1), at the mean L.
  MBU (CUDA, peak bandwidth known) = (weight bytes + KV bytes moved per decode step) / TPOT / peak bandwidth;
    regime: launch-bound below 10 %, bandwidth-bound at 50 % or more, mixed in between (rule U3, docs/measurement.md).
"""

from __future__ import annotations

from harness.core.hookspecs import hookimpl
from harness.core.workload import Workload
from harness.workloads.generate.interface import GenerateAPI
from harness.workloads.generate.knobs import GenerateKnobs
from harness.workloads.generate.run import GenerateRun, held_out, load_model
from harness.workloads.generate.spec import GenerateSpec

__all__ = ["GenerateAPI", "GenerateKnobs", "GenerateRun", "GenerateSpec", "GenerateWorkload", "held_out", "load_model"]


class GenerateWorkload(Workload):
    """Generate `new_tokens` tokens for `batch` held-out prompts; baseline: greedy decode without a KV cache."""

    name = "generate"
    kind = "inference"
    description = "prefill + decode of exactly new_tokens tokens per sequence; step = one full generate"
    Spec = GenerateSpec
    run_class = GenerateRun

    def finish(self, run: GenerateRun) -> None:
        run.units = run.units or {"tokens": run.batch * run.new_tokens, "sequences": run.batch}  # final prompts
        run.info.update(cache=run.knobs.cache_kind, layout=run.knobs.layout, batch=run.batch)


@hookimpl
def register_workloads(register) -> None:
    register(GenerateWorkload)
