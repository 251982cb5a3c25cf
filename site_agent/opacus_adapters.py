"""How the trainer's tensors and loss are handed to Opacus (`site_agent.train`); torch warm-up.

Opacus wants a criterion it can switch to per-sample reduction (ghost clipping), a dataset its
Poisson sampler indexes, and a collate function; these are ours, kept apart from the training
logic so that `train.py` reads as the DP-SGD procedure only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from survival.loss import nll_per_patient


class PerPatientNLL:
    """The per-patient loss as an Opacus criterion (ghost clipping asks it for ``reduction``)."""

    def __init__(self) -> None:
        self.reduction = "mean"

    def __call__(self, logits: torch.Tensor, interval: torch.Tensor, event: torch.Tensor) -> Any:
        per_patient = nll_per_patient(logits, interval, event)
        return per_patient if self.reduction == "none" else per_patient.mean()


class BatchTensors(Dataset[tuple[torch.Tensor, ...]]):
    """Tensors indexed a whole batch at a time (``__getitems__``): no per-row Python loop."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def passthrough(batch: Any) -> Any:
    """Collate for :class:`BatchTensors`: the batch is already stacked."""
    return batch


def secure_rng_problem() -> str | None:
    """Why Opacus's secure_mode cannot run here, or None: it draws noise and Poisson samples from
    torchcsprng, which must be importable."""
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return (
            "secure_mode=True needs the 'torchcsprng' package (Opacus draws noise and Poisson "
            "samples from its CSPRNG); it is not installed and has no build for torch 2.13. "
            "Run with secure_mode=False, or install a torchcsprng built for this torch."
        )
    return None


def warm_up() -> None:
    """Import what torch loads on a process's first backward pass (`torch._dynamo`, ~1 s of CPU):
    the agent does it in a thread at start, or every site paid it in its first round at once."""
    import torch._dynamo  # noqa: F401
