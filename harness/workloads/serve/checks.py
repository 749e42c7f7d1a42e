"""The serve workload's invariant helpers: every request's tokens equal serving it alone."""


from __future__ import annotations

from typing import Any

import torch

from harness import Check
from harness.core.checks import TIE_RULE, diverges_at_tie


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
    that generation's near-ties (harness.core.checks.TIE_RULE: the slot cache's masked attention over all slots, or a
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


