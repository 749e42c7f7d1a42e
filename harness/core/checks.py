"""Invariant checks shared by the optimizations: tokens (exact, or diverging only at a measured near-tie) and
tensors / losses (within a tolerance, widened on CUDA to a multiple of the baseline's own repeat-to-repeat
difference). Each returns a `harness.Check` whose tolerance text says the rule that was applied."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.core.optimization import Check

TIE_FLOOR_ULPS = 2  # the band is at least 2 x eps(dtype) x max|logit|: ties within rounding of the logits


TIE_NOISE_FACTOR = 4  # and at least 4 x the measured kernel noise of that position's logits


TIE_RULE = (f"exact; a sequence may diverge only where the baseline's choice was a near-tie (another token's "
            f"teacher-forced logit within max({TIE_FLOOR_ULPS} eps(dtype) x max|logit|, {TIE_NOISE_FACTOR} x the "
            "noise measured between computing the logits alone and in a batch of two), after which it is not "
            "compared")


@torch.inference_mode()
def near_ties(model: nn.Module, prompt: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype,
              k: int = 4) -> torch.Tensor:
    """[n, k]: at each of the n generated positions of one sequence (prompt [P], tokens [n], greedy), the token
    taken first, then up to k - 1 others whose teacher-forced logit is within the band of its logit; -1 pads.

    The band is measured, not assumed (TIE_RULE): the same sequence's logits are computed alone and as the
    first row of a batch of two, and a position's band is max(TIE_FLOOR_ULPS x eps(dtype) x max|logit|,
    TIE_NOISE_FACTOR x max|difference|): wide enough for the noise a different kernel or batch brings, narrow
    enough that a real change of the logits (a cache or mask bug) is not excused."""
    P = prompt.size(0)
    seq = torch.cat([prompt, tokens])[None, :-1]  # [1, P + n - 1]
    alone = model(seq)[0, P - 1:].float()  # [n, V]
    paired = model(seq.repeat(2, 1))[0, P - 1:].float()
    noise = (alone - paired).abs().amax(dim=1, keepdim=True)  # [n, 1]
    band = torch.maximum(TIE_FLOOR_ULPS * torch.finfo(dtype).eps * alone.abs().amax(dim=1, keepdim=True),
                         TIE_NOISE_FACTOR * noise)
    chosen = alone.gather(1, tokens[:, None])  # [n, 1]
    top = alone.topk(min(k, alone.size(1)), dim=1)
    near = (top.values >= chosen - band) & (top.indices != tokens[:, None])
    candidates = torch.where(near, top.indices, -1).sort(dim=1, descending=True).values  # -1s last
    return torch.cat([tokens[:, None], candidates[:, : k - 1]], dim=1)


@torch.inference_mode()
def batch_near_ties(model: nn.Module, prompts: torch.Tensor, pad: torch.Tensor | None, tokens: torch.Tensor,
                    dtype: torch.dtype, k: int = 4) -> torch.Tensor | None:
    """[B, n, k] `near_ties` of a greedy batch: prompts [B, P] left-padded by pad [B] (or None), tokens [B, n];
    one sequence at a time (without its padding), so the logits of a large batch never coexist. None when no
    token was generated."""
    if tokens.size(1) == 0:
        return None
    out = []
    for b in range(tokens.size(0)):
        start = int(pad[b]) if pad is not None else 0
        out.append(near_ties(model, prompts[b, start:], tokens[b].to(prompts.device), dtype, k).cpu())
    return torch.stack(out)


def diverges_at_tie(expected: torch.Tensor, got: torch.Tensor, ties: torch.Tensor) -> bool:
    """For one sequence (expected, got [n]; ties [n, k]) that differs: its first differing token was a near-tie."""
    j = int((expected != got).int().argmax())
    return bool((ties[j] == got[j]).any())


def compare_tokens(name: str, expected: torch.Tensor, got: torch.Tensor, ties: torch.Tensor | None = None) -> Check:
    """Check that two [B, n] token tensors are identical; values say where they first differ.

    With `ties` ([B, n, k] tokens that were near-ties of the expected side, -1 padded; see `batch_near_ties`), a
    sequence may instead diverge at a near-tie: a different kernel (a cache, a batch, bf16 on a GPU) legitimately
    breaks such a tie the other way, and the sequences differ from there on.
    """
    same = expected.shape == got.shape and bool(torch.equal(expected, got))
    values: dict[str, Any] = {"shape": list(got.shape), "expected_shape": list(expected.shape)}
    if same or expected.shape != got.shape:
        return Check(name, same, values, "exact")
    differ = expected != got
    diff = differ.nonzero()
    values.update(mismatches=int(diff.size(0)), first_mismatch=diff[0].tolist(),
                  sequences_differing=int(differ.any(dim=1).sum()))
    if ties is None:
        return Check(name, False, values, "exact")
    rows = differ.any(dim=1).nonzero().flatten().tolist()
    at_ties = [r for r in rows if diverges_at_tie(expected[r], got[r], ties[r])]
    first = [int(differ[r].int().argmax()) for r in at_ties]
    values.update(sequences_diverging_at_near_ties=len(at_ties),
                  positions_excused=sum(expected.size(1) - j for j in first),  # not compared after a tie
                  near_tie_positions=int((ties[..., 1:] >= 0).any(dim=-1).sum()))  # how permissive the band was
    return Check(name, len(at_ties) == len(rows), values, TIE_RULE)


def tokens_check(name: str, baseline: dict[str, Any], optimized: dict[str, Any]) -> Check:
    """`compare_tokens` of two sides' outputs, allowing divergence at the baseline's near-ties."""
    return compare_tokens(name, baseline["tokens"], optimized["tokens"], baseline.get("ties"))


NOISE_FACTOR = 4  # a tolerance is at least 4 x the baseline's own repeat-to-repeat difference (CUDA)


def repeat_noise(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """How far two correctness passes of the same baseline (same seed) differ: per tensor max |diff| of "params"
    and "grads", and |diff| of the final "loss". On CUDA, atomics in attention backward and reductions make
    them differ; on the CPU they are equal. The worker runs the repeat on CUDA and hands this to the checks as
    baseline["noise"]."""
    out: dict[str, Any] = {}
    for key in ("params", "grads"):
        a, b = first.get(key) or {}, second.get(key) or {}
        out[key] = {n: float((a[n] - b[n]).abs().max()) if a[n].numel() else 0.0 for n in a if n in b}
    if isinstance(first.get("loss"), float) and isinstance(second.get("loss"), float):
        out["loss"] = abs(first["loss"] - second["loss"])
    return out


def noise_of(outputs: dict[str, Any], key: str) -> dict[str, float] | None:
    """The repeat-to-repeat difference of `outputs[key]`'s tensors, where the worker measured one (CUDA)."""
    return (outputs.get("noise") or {}).get(key)


def loss_check(name: str, baseline: dict[str, Any], optimized: dict[str, Any], atol: float) -> Check:
    """The final loss of the correctness pass (after K steps) of both runs within `atol`, or within
    NOISE_FACTOR x the baseline's repeat-to-repeat difference where the worker measured one (CUDA)."""
    b, o = baseline["loss"], optimized["loss"]
    diff = abs(o - b)
    noise = (baseline.get("noise") or {}).get("loss")
    tol = max(atol, NOISE_FACTOR * noise) if noise is not None else atol
    values = {"baseline": b, "optimized": o, "abs_diff": diff, "steps": len(optimized["losses"])}
    if noise is not None:
        values["repeat_noise"] = noise
    return Check(name, diff <= tol, values, f"abs {atol:g}" + (
        f" or {NOISE_FACTOR} x the baseline's repeat difference {noise:.3g}: {tol:.3g}" if noise is not None else ""))


def precision_mismatch(name: str, baseline: dict[str, Any], optimized: dict[str, Any]) -> Check | None:
    """A failed `name` check when the two sides ran at different precisions (their tensors cannot be compared
    then), else None."""
    precisions = baseline.get("precision"), optimized.get("precision")
    if precisions[0] == precisions[1]:
        return None
    return Check(name, False, {"baseline_precision": precisions[0], "optimized_precision": precisions[1]},
                 "same precision on both sides: add the precision plugin to the case's baseline")


def tensors_check(name: str, baseline: dict[str, torch.Tensor], optimized: dict[str, torch.Tensor],
                  rtol: float, atol: float, atol_of_max: float = 0.0, noise: dict[str, float] | None = None) -> Check:
    """Every named tensor equal (`torch.allclose`) in both runs; reports the worst one. `atol_of_max` raises a
    tensor's atol to that fraction of its largest |value| (round-off of sums that cancel scales with the terms);
    `noise` (tensor name -> max |diff| between two passes of the baseline: `repeat_noise`, CUDA) raises it to
    NOISE_FACTOR x that tensor's own repeat difference."""
    tol = f"rtol {rtol:g}, atol {atol:g}{f' or {atol_of_max:g} x max|tensor|' if atol_of_max else ''}"
    tol += (f" or {NOISE_FACTOR} x the baseline's repeat difference" if noise else "") + " per element"
    if baseline.keys() != optimized.keys():
        missing = sorted(baseline.keys() ^ optimized.keys())
        return Check(name, False, {"mismatched_names": missing[:5]}, tol)
    worst, worst_diff, passed = "", 0.0, True
    for key, b in baseline.items():
        o = optimized[key]
        if b.shape != o.shape:
            return Check(name, False, {"tensor": key, "shapes": [list(b.shape), list(o.shape)]}, tol)
        diff = (o - b).abs().max().item() if b.numel() else 0.0
        tensor_atol = max(atol, atol_of_max * b.abs().max().item()) if b.numel() else atol
        tensor_atol = max(tensor_atol, NOISE_FACTOR * (noise or {}).get(key, 0.0))
        passed = passed and torch.allclose(o, b, rtol=rtol, atol=tensor_atol)
        if not diff <= worst_diff:  # also catches nan
            worst, worst_diff = key, diff
    scale = max(t.abs().max().item() for t in baseline.values() if t.numel())
    values = {"max_abs_diff": worst_diff, "worst": worst, "max_abs_value": scale, "tensors": len(baseline)}
    if noise:
        values["repeat_noise_max"] = max(noise.values())
    return Check(name, passed, values, tol)
