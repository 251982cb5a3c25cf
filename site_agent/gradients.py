"""Per-patient clipped gradient sums for distributed DP-SGD, and the Poisson batch sampler.

In distributed DP-SGD a site does not add Gaussian noise itself: it releases the *sum* of its
sampled patients' clipped gradients (integer-encoded, plus a Skellam share, through secure
aggregation). Adding or removing one patient moves that sum by at most `max_grad_norm` in L2,
which is the sensitivity Δ the encoding and the accountant use.

Per-patient gradients of a model built from `nn.Linear` layers and parameter-free modules (every
`survival.models` kind) come from one ordinary batched pass (`_linear_gradients`): a patient's loss
depends on its own row only, so row i of ∂(Σ nll)/∂z for a layer's output z is ∂nll_i/∂z_i, and
the layer's per-patient gradients are that row times the row's input (weight) and the row itself
(bias), as Opacus computes them for Linear layers. At d ≈ 1e3 and 250 patients that is several
times faster than tracing per row, and distributed mode computes it every round.

Any other model gets them from `torch.func` in two vectorised passes, so that the loss is
`survival.loss.nll_per_patient` itself (its input checks are data-dependent Python control flow,
which `vmap` cannot trace):

1. the model's logits for every row under `vmap`, then g = ∂ Σ_i nll_i / ∂ logits with ordinary
   autograd; row i of g is ∂ nll_i / ∂ logits_i, since a patient's loss depends on its own row;
2. `vmap(grad(⟨model(x_i), g_i⟩))`: by the chain rule, the gradient of nll_i with respect to
   every parameter.

Dropout (random per row under `vmap(randomness="different")`) draws the same masks in both passes
because the CPU RNG state is restored between them; the second pass returns its logits, which
must equal the first pass's, otherwise (or if `vmap` cannot handle a layer) the gradients are
computed row by row instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from survival.loss import nll_per_patient

__all__ = ["clip_rows", "clipped_gradient_sum", "per_patient_gradients", "poisson_batch"]

Params = dict[str, Tensor]


def poisson_batch(n: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of rows 0..n−1 each kept independently with probability q (Poisson sampling, the
    sampling DP-SGD's amplification analysis assumes). May be empty."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not (isinstance(q, int | float) and math.isfinite(q) and 0.0 <= q <= 1.0):
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    return np.flatnonzero(rng.random(int(n)) < q)


def clipped_gradient_sum(
    model: nn.Module, x: Tensor, interval: Tensor, event: Tensor, max_grad_norm: float
) -> tuple[np.ndarray, int]:
    """Σ_i clip(∇θ nll_i) over the rows, flat in `survival.models.flat_parameters` order.

    Each patient's gradient over *all* parameters is scaled to L2 norm ≤ `max_grad_norm` (flat
    clipping, as Opacus does), then the rows are summed in float64. Returns (sum, rows); an
    empty batch gives (zeros, 0).
    """
    clipped = clip_rows(per_patient_gradients(model, x, interval, event), max_grad_norm)
    return clipped.sum(dim=0).numpy(), int(clipped.shape[0])


def clip_rows(grads: Tensor, max_grad_norm: float) -> Tensor:
    """Scale each row of `grads` [B, d] by min(1, C/‖row‖₂), in float64.

    The computed norm of a clipped row is C to within float64 rounding (a few ulps), far below
    the √d slack the integer encoding already adds to the sensitivity.
    """
    if not (isinstance(max_grad_norm, int | float) and math.isfinite(max_grad_norm)):
        raise ValueError(f"max_grad_norm must be a finite number, got {max_grad_norm!r}")
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if grads.ndim != 2:
        raise ValueError(f"expected per-row gradients [B, d], got shape {tuple(grads.shape)}")
    rows = grads.to(torch.float64)
    norms = torch.linalg.vector_norm(rows, dim=1)
    factor = torch.clamp(max_grad_norm / norms, max=1.0)  # a zero row: C/0 = inf → 1
    return rows * factor.unsqueeze(1)


def per_patient_gradients(model: nn.Module, x: Tensor, interval: Tensor, event: Tensor) -> Tensor:
    """∇θ nll_i for every row i, as float64 [B, d] in `flat_parameters` order (unclipped).

    `model` is a plain module (not an Opacus wrapper); its train/eval mode is respected.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    if not params:
        raise ValueError("the model has no parameters")
    if x.ndim != 2:
        raise ValueError(f"x must be [B, p], got shape {tuple(x.shape)}")
    rows = int(x.shape[0])
    if interval.shape != (rows,) or event.shape != (rows,):
        raise ValueError(
            f"interval and event must have shape ({rows},), got "
            f"{tuple(interval.shape)} and {tuple(event.shape)}"
        )
    dtype = next(iter(params.values())).dtype
    x = x.to(dtype)
    if rows == 0:
        width = sum(p.numel() for p in params.values())
        return torch.zeros((0, width), dtype=torch.float64)
    per_row = _linear_gradients(model, x, interval, event)
    if per_row is None:
        try:
            per_row = _vmap_gradients(model, params, x, interval, event)
        except _VmapUnavailable as exc:
            warnings.warn(f"per-patient gradients row by row: {exc}", RuntimeWarning, stacklevel=2)
            per_row = _loop_gradients(model, params, x, interval, event)
    return _flatten(per_row, rows).to(torch.float64)


def _linear_gradients(
    model: nn.Module, x: Tensor, interval: Tensor, event: Tensor
) -> Params | None:
    """Per-patient gradients from one batched forward and backward pass (module docstring), or
    None when the model is not only Linear layers each applied once (then `vmap` does it)."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    owned = {id(p) for m in linears.values() for p in m.parameters(recurse=False)}
    if not linears or any(id(p) not in owned for p in model.parameters()):
        return None
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    reused: list[str] = []

    def recorder(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if name in outputs or len(args) != 1 or args[0].ndim != 2:
                reused.append(name)  # applied twice, or not to one [B, in] input: not this path
            else:
                inputs[name], outputs[name] = args[0], output

        return record

    handles = [m.register_forward_hook(recorder(name)) for name, m in linears.items()]
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if reused or set(outputs) != set(linears) or not logits.requires_grad:
        return None
    loss = nll_per_patient(logits, interval, event).sum()
    names = list(outputs)
    backprops = torch.autograd.grad(loss, [outputs[name] for name in names], allow_unused=True)
    grads: Params = {}
    for name, g in zip(names, backprops, strict=True):
        g = torch.zeros_like(outputs[name]) if g is None else g.detach()  # an unused layer
        grads[f"{name}.weight"] = torch.einsum("bo,bi->boi", g, inputs[name].detach())
        if linears[name].bias is not None:
            grads[f"{name}.bias"] = g
    return {name: grads[name] for name, _ in model.named_parameters()}


class _VmapUnavailable(RuntimeError):
    """`vmap` could not compute these gradients (unsupported layer, inconsistent dropout)."""


def _row_forward(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    def forward(params: Params, row: Tensor) -> Tensor:
        logits: Tensor = functional_call(model, params, (row.unsqueeze(0),))
        return logits.squeeze(0)

    return forward


def _vmap_gradients(
    model: nn.Module, params: Params, x: Tensor, interval: Tensor, event: Tensor
) -> Params:
    """The two vectorised passes of the module docstring."""
    forward = _row_forward(model)

    def weighted(p: Params, row: Tensor, g_row: Tensor) -> tuple[Tensor, Tensor]:
        logits = forward(p, row)
        return (logits * g_row).sum(), logits

    rng_state = torch.get_rng_state()
    try:
        logits = vmap(forward, in_dims=(None, 0), randomness="different")(params, x)
    except (RuntimeError, NotImplementedError) as exc:
        raise _VmapUnavailable(f"vmap failed on the forward pass ({exc})") from exc
    logits = logits.detach().requires_grad_(True)
    loss = nll_per_patient(logits, interval, event).sum()  # checks intervals, outside vmap
    (g,) = torch.autograd.grad(loss, logits)
    torch.set_rng_state(rng_state)
    try:
        per_row, again = vmap(
            grad(weighted, has_aux=True), in_dims=(None, 0, 0), randomness="different"
        )(params, x, g)
    except (RuntimeError, NotImplementedError) as exc:
        raise _VmapUnavailable(f"vmap failed on the backward pass ({exc})") from exc
    if not torch.equal(again, logits.detach()):
        raise _VmapUnavailable("the two passes drew different dropout masks")
    result: Params = per_row
    return result


def _loop_gradients(
    model: nn.Module, params: Params, x: Tensor, interval: Tensor, event: Tensor
) -> Params:
    """The reference: one `torch.func.grad` per row (slow, handles anything autograd does)."""

    def row_loss(p: Params, i: int) -> Tensor:
        logits = functional_call(model, p, (x[i : i + 1],))
        loss: Tensor = nll_per_patient(logits, interval[i : i + 1], event[i : i + 1]).sum()
        return loss

    rows = [grad(row_loss)(params, i) for i in range(int(x.shape[0]))]
    return {name: torch.stack([r[name] for r in rows]) for name in params}


def _flatten(per_row: Params, rows: int) -> Tensor:
    """[B, d]: parameters concatenated in `named_parameters` order, which is the order of
    `parameters()` and hence of `flat_parameters`."""
    return torch.cat([g.reshape(rows, -1) for g in per_row.values()], dim=1)
