"""Request traces: when requests arrive and how long their prompts and outputs are.

Arrivals follow vLLM's `benchmark_serving`: inter-arrival gaps drawn from a gamma distribution with shape
`burstiness` and scale 1 / (rate x burstiness), so the mean rate is `rate` whatever the burstiness; burstiness 1 is
a Poisson process, below 1 burstier, above 1 more regular. An infinite rate is the offline scenario: every request
at t = 0 (MLPerf's Offline; the maximum throughput). Lengths are uniform in a range (the `serve` workload draws
them) or read from a user's JSONL / CSV file (`read_lengths`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.errors import InputError
from harness.core.yamlsafe import read_text
from harness.workloads.generate import held_out


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """`n` arrival times in seconds from 0: cumulative gamma(burstiness, 1 / (rate x burstiness)) gaps, the first
    request after one gap; all 0.0 when `rate` is infinite (offline)."""
    if math.isinf(rate):
        return [0.0] * n
    g = torch.Generator().manual_seed(seed)
    gamma = torch.distributions.Gamma(torch.tensor(float(burstiness)), torch.tensor(rate * burstiness))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=g)))
        gaps = gamma.sample((n,)).double()
    return gaps.cumsum(0).tolist()


MAX_LENGTHS_BYTES = 64 << 20  # 64 MiB: about a million rows, far more than a trace of requests uses
MAX_LENGTH = 1 << 20  # tokens of one prompt or output: any model's context is shorter


def read_lengths(path: str | Path) -> list[tuple[int, int]]:
    """(prompt_len, output_len) rows of a JSONL file ({"prompt_len": P, "output_len": N} per line) or a CSV file
    with those two columns; InputError naming the file, line and field for a bad row, a file that is not UTF-8
    text or one over MAX_LENGTHS_BYTES."""
    path = Path(path).expanduser()
    text = read_text(path, "the lengths file", MAX_LENGTHS_BYTES)
    rows = _csv_rows(text, path) if path.suffix == ".csv" else _jsonl_rows(text, path)
    out = [(_length(row, "prompt_len", path, line), _length(row, "output_len", path, line)) for line, row in rows]
    if not out:
        raise InputError("the lengths file has no rows", str(path))
    return out


def _csv_rows(text: str, path: Path) -> list[tuple[int, Any]]:
    reader = csv.DictReader(text.splitlines())
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:  # a field over csv.field_size_limit(): line_num counts the rows read whole
        raise InputError(f"not a CSV row: {exc}", str(path), reader.line_num + 1) from None
    return rows


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, Any]]:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"not a JSON object: {exc}", str(path), i) from None
        if not isinstance(row, dict):
            raise InputError(f"not a JSON object (got {type(row).__name__}); write "
                             '{"prompt_len": P, "output_len": N}', str(path), i)
        rows.append((i, row))
    return rows


def _length(row: dict, key: str, path: Path, line: int) -> int:
    """The whole number of tokens `row[key]` gives (an int, a float such as 12.0, or a CSV cell), 1..MAX_LENGTH."""
    value = row.get(key)
    if value is None:  # a CSV without the column, a JSON row without it
        raise InputError(f"has no '{key}' ({'column' if path.suffix == '.csv' else 'key'}; both prompt_len and "
                         "output_len are needed)", str(path), line, key)
    number = value
    if isinstance(value, str) and value.strip().isascii():
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise InputError(f"needs a whole number of tokens '{key}' (got {value!r})", str(path), line, key)
    if not 1 <= number <= MAX_LENGTH:
        raise InputError(f"'{key}' must be in 1..{MAX_LENGTH:,} tokens (got {number})", str(path), line, key)
    return number


@dataclass
class Request:
    """One request of a trace: its arrival, prompt tokens and how many tokens it asks for."""

    id: int
    arrival: float  # seconds after the start of serving
    prompt: torch.Tensor  # [P]
    out_len: int


def make_trace(spec: Any, seed: int, vocab: int) -> list[Request]:
    """`spec.requests` requests (a `serve` workload's ServeSpec), seeded: arrivals at `rate` (`arrival_times`:
    Poisson, gamma or offline), lengths uniform in their ranges or from `lengths_file` (in order, cycled), prompt
    tokens from `harness.workloads.generate.held_out`. The same for both sides of a case."""
    g = torch.Generator().manual_seed(seed)
    plens = torch.randint(spec.prompt_min, spec.prompt_max + 1, (spec.requests,), generator=g).tolist()
    olens = torch.randint(spec.output_min, spec.output_max + 1, (spec.requests,), generator=g).tolist()
    if spec.lengths_file:
        lengths = read_lengths(spec.lengths_file)
        plens, olens = zip(*(lengths[i % len(lengths)] for i in range(spec.requests)))
    rate = math.inf if spec.arrivals == "offline" else spec.rate
    arrivals = arrival_times(spec.requests, rate, spec.burstiness if spec.arrivals == "gamma" else 1.0, seed)
    tokens = held_out(spec.requests, max(plens), seed + 2, spec.prompts == "synthetic", vocab)
    return [Request(i, arrivals[i], tokens[i, :plens[i]], int(olens[i])) for i in range(spec.requests)]
