"""Which of the site's rows a run trains on, and whether the site evaluates at all.

The site's keyed split (`site_agent.split`) puts each patient in the training or the held-out
partition for the ledger's whole life. A plan may say that a site smaller than
`training.holdout_min_site_rows` holds nothing out: a fifth of 60 patients is worth more to the
model than as a metric whose noise drowns it. Such a site trains on every valid row and answers
no evaluation; its training releases are charged to the partition `both`, since they read
patients of both partitions, so the ledger's parallel composition stays sound: a held-out
patient trained on in this run is charged there too, should a later run evaluate on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from federation.plan import RunPlan
from site_agent.data import LocalDataset

Partition = Literal["train", "holdout", "both"]


@dataclass(frozen=True)
class Rows:
    """The rows one release reads, and the ledger partition its charge goes to."""

    raw: np.ndarray
    time: np.ndarray
    event: np.ndarray
    partition: Partition

    @property
    def size(self) -> int:
        """Number of patients."""
        return int(self.time.size)


def holds_out(plan: RunPlan, data: LocalDataset) -> bool:
    """Whether this site keeps its held-out partition for evaluation under `plan`."""
    return data.n_valid >= plan.training.holdout_min_site_rows


def training_rows(plan: RunPlan, data: LocalDataset) -> Rows:
    """The rows the statistics and training releases read under `plan`."""
    if holds_out(plan, data):
        raw, time_, event = data.split(holdout=False)
        return Rows(raw, time_, event, "train")
    return Rows(data.raw, data.time, data.event, "both")


def holdout_rows(data: LocalDataset) -> Rows:
    """The held-out rows (evaluation only)."""
    raw, time_, event = data.split(holdout=True)
    return Rows(raw, time_, event, "holdout")
