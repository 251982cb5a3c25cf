"""The report's figures, each returned as a base64 PNG so the HTML needs no other file.

matplotlib is an optional dependency (`pip install 'concordia[report]'`): it is imported here,
inside `_pyplot`, with the Agg backend, so that `fedctl` runs (and says how to install it) on a
machine without it or without a display.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from survival.kaplan_meier import KaplanMeier

WIDTH, HEIGHT, DPI = 7.5, 4.0, 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never a window, never a display server
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curve(rows: Sequence[Mapping[str, Any]]) -> str:
    """c_windowed and IBS per evaluated round; rows carry round, value and a DP-noise interval."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, HEIGHT * 0.8), dpi=DPI)
    for ax, name, label in zip(
        axes,
        ("c_windowed", "ibs"),
        ("windowed C (higher is better)", "IBS (lower is better)"),
        strict=True,
    ):
        points = [r for r in rows if r["name"] == name]
        if not points:
            ax.text(0.5, 0.5, f"no {name} released", ha="center", va="center")
            ax.set_axis_off()
            continue
        x = np.array([p["round"] for p in points], dtype=float)
        y = np.array([p["value"] for p in points], dtype=float)
        lo = np.array(
            [p["interval"][0] if p["interval"] else v for p, v in zip(points, y, strict=True)]
        )
        hi = np.array(
            [p["interval"][1] if p["interval"] else v for p, v in zip(points, y, strict=True)]
        )
        ax.fill_between(x, lo, hi, alpha=0.25, color="C0", label="95% DP-noise interval")
        ax.plot(x, y, "o-", color="C0", label=name)
        ax.set_xlabel("round")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def epsilon_plot(
    series: Mapping[str, Sequence[tuple[int, float]]], budget: float, over_rounds: bool
) -> str:
    """ε spent per site: a line per site over rounds (from the audit), else final bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT * 0.8), dpi=DPI)
    sites = sorted(series)
    if over_rounds:
        for site in sites:
            points = sorted(series[site])
            ax.step([p[0] for p in points], [p[1] for p in points], "o-", where="post", label=site)
        ax.set_xlabel("round")
    else:
        finals = [series[s][-1][1] if series[s] else 0.0 for s in sites]
        ax.bar(sites, finals, color="C1")
        ax.set_xlabel("site")
    ax.axhline(budget, color="C3", ls="--", label=f"plan budget ε = {budget:g}")
    ax.set_ylabel("ε spent in this run")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def calibration_plot(
    cuts: Sequence[float],
    model_mean: np.ndarray,
    km: KaplanMeier | None,
    time_unit: str,
    km_label: str,
) -> str:
    """The consortium KM with its band against the model's mean predicted survival."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT), dpi=DPI)
    t = np.concatenate([[0.0], np.asarray(cuts, dtype=float)])
    if km is not None:
        ax.fill_between(
            t,
            np.concatenate([[1.0], km.lower]),
            np.concatenate([[1.0], km.upper]),
            step="post",
            alpha=0.25,
            color="C0",
            label=f"{int(km.level * 100)}% band (Greenwood + DP noise)",
        )
        ax.step(t, np.concatenate([[1.0], km.survival]), where="post", color="C0", label=km_label)
    ax.plot(t, np.concatenate([[1.0], model_mean]), "s--", color="C3", label="model: mean S(t)")
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("event-free survival")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def forest_plot(
    ratios: Mapping[str, float],
    intervals: Mapping[str, tuple[float, float]] | None = None,
    label: str = "hazard-odds ratio per consortium SD (log scale)",
) -> str:
    """Hazard-odds ratios on a log axis around 1 (no effect), with the 95 % interval of each
    feature's DP noise as a bar where `intervals` has one (`federation/hazard_intervals.py`);
    a bar that crosses 1 marks an effect the noise alone could produce."""
    plt = _pyplot()
    names = list(ratios)
    spans = intervals or {}
    fig, ax = plt.subplots(figsize=(WIDTH, max(2.0, 0.45 * len(names) + 1.0)), dpi=DPI)
    y = np.arange(len(names))[::-1]
    values = np.array([ratios[n] for n in names])
    ax.axvline(1.0, color="grey", lw=1)
    extremes = [float(v) for v in values]
    for yi, name in zip(y, names, strict=True):
        if name in spans:
            lo, hi = spans[name]
            ax.plot([lo, hi], [yi, yi], "-", color="C2", lw=2, alpha=0.6)
            extremes += [lo, hi]
    ax.plot(values, y, "D", color="C2")
    for yi, name, v in zip(y, names, values, strict=True):
        text = f"{v:.2f}"
        if name in spans:
            text += f" ({spans[name][0]:.2f}–{spans[name][1]:.2f})"
        ax.annotate(text, (v, yi), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    logs = np.abs(np.log(np.asarray(extremes))) if extremes else np.array([0.1])
    span = max(float(np.max(logs)), 0.1) * 1.5
    low, high = float(np.exp(-span)), float(np.exp(span))
    ax.set_xlim(low, high)
    # a few plain ratios as ticks: the log axis's default minor labels overlap at this width
    ticks = [t for t in (0.1, 0.2, 0.33, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(_pyplot().NullFormatter())
    ax.set_xlabel(label)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)
