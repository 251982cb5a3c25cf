"""`fedctl report RUN --out DIR`: one self-contained HTML page about a run (docs/report.md).

It fetches the run's export and status (and, where the caller may read it, the audit log, which
holds each site's ε after every result), writes the export itself with `fedctl.runs.write_export`
(so the report's model is exactly what `survival.export.load_model` loads) and then DIR/report.html:
training curve, ε per site, the consortium's Kaplan–Meier against the model's mean prediction,
hazard ratios, the per-site table and a Mitchell et al. model card (`fedctl.model_card`). Every
figure is a base64 PNG inside the page, so it opens offline and can be mailed as one file.

`write_report` needs no server: `fedctl demo` calls it with the answers it already has.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedctl.errors import EXIT_OK, CliError
from fedctl.hazard_card import add_hazard_ratios
from fedctl.model_card import (
    build_model_card,
    evaluations,
    metric_interval,
    metric_noise_std,
    to_markdown,
)
from fedctl.remote import add_config_argument, admin_stub, rpc_error
from fedctl.report_html import (
    CHECK_SCRIPT,
    STYLE,
    image_html,
    model_card_html,
    section_html,
    table_html,
)
from fedctl.wire_names import PLAN_DECISIONS, word
from federation.noise import stats_noise_multiplier
from federation.plan import RunPlan
from federation.releases import StatsLayout
from federation.wire.v1 import admin_pb2
from survival.kaplan_meier import KaplanMeier, kaplan_meier
from survival.schema import NumericFeature

REPORT_FILE = "report.html"
CARD_JSON, CARD_MD = "model_card_mitchell.json", "model_card_mitchell.md"
INSTALL_HINT = "fedctl report needs matplotlib: pip install 'concordia[report]'"
POPULATION = 4000


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run_id")
    p.add_argument("--round", type=int, default=0, help="round to report on (default: latest)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html + the export")
    add_config_argument(p)
    p.set_defaults(handler=cmd_report)


def require_matplotlib() -> None:
    """Fail with the install line, not an ImportError deep inside a plot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError(INSTALL_HINT) from None


def cmd_report(args: argparse.Namespace) -> int:
    require_matplotlib()
    stub, _channel = admin_stub(args.config)
    try:
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=args.run_id, round=args.round))
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=args.run_id))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    path = write_report(export, status, args.out, audit=fetch_audit(stub, args.run_id))
    if args.output == "json":
        print(json.dumps({"report": str(path)}))
    else:
        print(f"report of {export.run_id} round {export.round}: {path}")
    return EXIT_OK


def fetch_audit(stub: Any, run_id: str, page: int = 1000) -> list[dict[str, Any]]:
    """This run's audit entries as dicts (actor, action, detail), or [] if the log is not ours
    to read: ε over rounds is a nicety, the report is written without it."""
    out: list[dict[str, Any]] = []
    after = 0
    try:
        for _ in range(1000):
            response = stub.GetAudit(admin_pb2.GetAuditRequest(after_seq=after, limit=page))
            if not response.entries:
                break
            for entry in response.entries:
                detail = json.loads(entry.detail_json or "{}")
                if isinstance(detail, dict) and detail.get("run_id") == run_id:
                    out.append({"actor": entry.actor, "action": entry.action, "detail": detail})
            after = response.entries[-1].seq
    except grpc.RpcError:
        return []
    return out


# ---------------------------------------------------------------------- the figures' data
def epsilon_series(
    card: Mapping[str, Any],
    status: admin_pb2.RunStatus | None,
    audit: Iterable[Mapping[str, Any]] | None,
) -> tuple[dict[str, list[tuple[int, float]]], bool]:
    """Per site, (round, ε spent so far in the run): from the audit's `result` entries when
    there are any, else from the ε each aggregation record kept (both over rounds), else the
    final figure of the status or the card."""
    series: dict[str, dict[int, float]] = {}
    for entry in audit or []:
        detail = entry.get("detail", {})
        actor = str(entry.get("actor", ""))
        if entry.get("action") != "result" or "epsilon_run" not in detail:
            continue
        if not actor.startswith("site:"):
            continue
        rounds = series.setdefault(actor.removeprefix("site:"), {})
        r = int(detail.get("round", 0))
        rounds[r] = max(rounds.get(r, 0.0), float(detail["epsilon_run"]))
    if not series:  # no audit to read: the ε each step's record kept (coordinator/effects.py)
        for record in card.get("history", []):
            for site, eps in (record.get("epsilon") or {}).items():
                rounds = series.setdefault(site, {})
                r = int(record.get("round", 0))
                rounds[r] = max(rounds.get(r, 0.0), float(eps))
    if series:
        return {s: sorted(r.items()) for s, r in series.items()}, True
    final: dict[str, float] = {
        site: float(p.get("epsilon_run", 0.0)) for site, p in card.get("privacy", {}).items()
    }
    for site in status.sites if status is not None else []:
        final[site.site_id] = max(final.get(site.site_id, 0.0), site.epsilon_spent)
    return {s: [(int(card.get("round", 0)), e)] for s, e in final.items()}, False


def consortium_km(
    card: Mapping[str, Any], plan: RunPlan, consortium: Mapping[str, Any] | None
) -> tuple[KaplanMeier | None, str]:
    """The KM of the statistics release's noised per-interval totals, and where they came from.

    The coordinator's model card does not carry them (`coordinator/convert.py`): they come from
    `consortium` (a caller that holds them, with "events", "at_risk" and optionally "sites"), or
    from a card "consortium" entry should a later coordinator add one; otherwise there is no KM
    and the text says so."""
    source = "the caller (the coordinator's statistics release)"
    counts = consortium
    if counts is None and isinstance(card.get("consortium"), Mapping):
        counts, source = card["consortium"], "the model card's consortium counts"
    if counts is None:
        return None, (
            "No consortium Kaplan–Meier: this export carries no per-interval event and at-risk"
            " totals (the coordinator's model card has the plan, history and privacy only), so"
            " only the model's curve is shown."
        )
    events = np.asarray(counts["events"], dtype=np.float64)
    at_risk = np.asarray(counts["at_risk"], dtype=np.float64)
    stats = next((r for r in card.get("history", []) if r.get("purpose") == "stats"), None)
    n_sites = int(counts.get("sites") or len(stats["survivors"] if stats else card["privacy"]))
    layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
    noise = stats_noise_multiplier(plan) * layout.sensitivity * math.sqrt(max(n_sites, 1))
    km = kaplan_meier(
        events, at_risk, events_noise_std=noise, at_risk_noise_std=noise / layout.at_risk_weight
    )
    return km, (
        f"Kaplan–Meier of the DP-noised per-interval totals of the statistics release ({source},"
        f" {n_sites} sites); band: Greenwood plus the known noise (events σ = {noise:.1f},"
        f" at risk σ = {noise / layout.at_risk_weight:.1f}) by the delta method."
    )


def synthetic_population(plan: RunPlan, means: Sequence[float], stds: Sequence[float]) -> Any:
    """Standardised rows drawn from the consortium's released moments, features independent:
    numeric values normal (clipped to the plan's bounds), a categorical feature's dummies one-hot
    with the released shares. No patient row reaches the coordinator, so the model's mean
    prediction can only be taken over such a population (docs/report.md says so)."""
    rng = np.random.default_rng(0)
    mean, std = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    x = np.zeros((POPULATION, mean.size))
    col = 0
    for feature in plan.features:
        width = len(feature.encoded_names())
        if isinstance(feature, NumericFeature):
            x[:, col] = np.clip(
                rng.normal(mean[col], std[col], POPULATION), *feature.encoded_range()
            )
            if width == 2:
                x[:, col + 1] = rng.random(POPULATION) < np.clip(mean[col + 1], 0, 1)
        else:
            shares = np.clip(mean[col : col + width], 0.0, 1.0)
            probs = np.concatenate([[max(1.0 - shares.sum(), 0.0)], shares])
            probs = probs / probs.sum() if probs.sum() > 0 else np.full(width + 1, 1 / (width + 1))
            level = rng.choice(width + 1, size=POPULATION, p=probs)
            for j in range(width):
                x[:, col + j] = level == j + 1
        col += width
    return (x - mean) / std


def model_mean_survival(folder: Path, plan: RunPlan) -> np.ndarray:
    """The exported model's mean S(c_k) over `synthetic_population`, through `load_model`."""
    import torch

    from survival.export import load_model
    from survival.loss import survival_curve

    model = load_model(folder)
    z = synthetic_population(plan, model.standardization.means, model.standardization.stds)
    with torch.no_grad():
        logits = model._model(torch.as_tensor(z, dtype=torch.float32))
        surv = survival_curve(logits).numpy().astype(np.float64)
    mean: np.ndarray = surv.mean(axis=0)
    return mean


def write_report(
    export_response: admin_pb2.ExportRunResponse,
    status: admin_pb2.RunStatus | None,
    out_dir: Path,
    *,
    audit: Iterable[Mapping[str, Any]] | None = None,
    consortium: Mapping[str, Any] | None = None,
) -> Path:
    """Write the export, the Mitchell card (JSON + Markdown) and report.html into `out_dir`."""
    require_matplotlib()
    from fedctl import report_plots as plots
    from fedctl.runs import write_export

    out_dir = Path(out_dir)
    write_export(export_response, out_dir)
    card: dict[str, Any] = json.loads(export_response.model_card_json)
    plan = RunPlan.model_validate(card["plan"])
    mitchell = build_model_card(card, status, export_response.round)
    hazards = add_hazard_ratios(mitchell, out_dir)  # needs the export written just above
    (out_dir / CARD_JSON).write_text(json.dumps(mitchell, indent=2) + "\n")
    (out_dir / CARD_MD).write_text(to_markdown(mitchell))

    sections: list[str] = []
    # training curve
    rows: list[dict[str, Any]] = []
    for record in evaluations(card):
        noise = metric_noise_std(plan, record)
        for name in ("c_windowed", "ibs"):
            if name in record["metrics"]:
                value = float(record["metrics"][name])
                interval = metric_interval(value, noise.get(name))
                rows.append(
                    {"name": name, "round": record["round"], "value": value, "interval": interval}
                )
    if rows:
        body = image_html(plots.training_curve(rows), "training curve") + (
            '<p class="note">Consortium metrics of each evaluation on the sites\' held-out'
            " splits. Shaded: 95% interval from the coordinator's standard errors (the known DP"
            " noise and the sampling error, federation/metric_intervals.py).</p>"
        )
    else:
        body = '<p class="note">No evaluation with figures was released in this run.</p>'
    sections.append(section_html("training", "Training curve", body))

    # privacy
    series, over_rounds = epsilon_series(card, status, audit)
    if series:
        how = "final, from the status"
        if over_rounds:
            how = (
                "after each result, from the audit log"
                if audit
                else "at each aggregation, from the model card's history"
            )
        body = image_html(
            plots.epsilon_plot(series, plan.privacy.epsilon, over_rounds), "epsilon"
        ) + (
            f'<p class="note">ε each site has spent in this run ({how}); δ ='
            f" {plan.privacy.delta:g}, accountant {plan.privacy.accountant}.</p>"
        )
    else:
        body = '<p class="note">No site reported any privacy spending.</p>'
    sections.append(section_html("privacy", "Privacy spent per site", body))

    # calibration in the large
    km, km_text = consortium_km(card, plan, consortium)
    mean = model_mean_survival(out_dir, plan)
    figure = plots.calibration_plot(
        plan.time_grid.cuts, mean, km, plan.time_unit, "consortium Kaplan–Meier"
    )
    body = image_html(figure, "calibration") + (
        f'<p class="note">{html.escape(km_text)} Model: mean predicted S(t) over {POPULATION}'
        " synthetic patients drawn from the consortium's released feature means and SDs"
        " (features independent), the model's survival at the grid's cuts.</p>"
    )
    sections.append(section_html("calibration", "Calibration in the large", body))

    # hazard ratios
    if plan.model.kind == "linear" and "ratios" not in hazards:
        body = f'<p class="note">{html.escape(hazards["note"])}</p>'
    elif plan.model.kind == "linear":
        ratios = {r["feature"]: r["ratio"] for r in hazards["ratios"]}
        spans = {r["feature"]: (r["lower"], r["upper"]) for r in hazards["ratios"] if "lower" in r}
        body = image_html(plots.forest_plot(ratios, spans), "hazard ratios") + (
            '<p class="note">exp(β) per consortium SD of each encoded feature (dummies: level'
            f" against the reference). Bars: {html.escape(hazards['covers'])}"
            " (federation/hazard_intervals.py).</p>"
        )
    else:
        body = (
            f'<p class="note">This is a {html.escape(plan.model.kind)} model: its feature effects'
            " vary with the patient and time, so it has no hazard ratios. Compare"
            " predict_survival curves of typical patients instead.</p>"
        )
    sections.append(section_html("hazard-ratios", "Hazard ratios", body))
    from fedctl.report_fairness import fairness_sections  # subgroups, importance bars

    sections.extend(fairness_sections(card))
    from fedctl.report_sites import site_section  # each site's own figures, where published

    sections.append(site_section(card))
    sections.append(section_html("sites", "Sites", _site_table(card, status)))
    sections.append(section_html("model-card", "Model card", model_card_html(mitchell)))

    title = (
        f"Concordia report: {plan.name} ({export_response.run_id}, round {export_response.round})"
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{STYLE}{CHECK_SCRIPT}</head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Plan sha256 <code>{html.escape(str(card.get('plan_sha256', '')))}</code> · status"
        f" {html.escape(str(card.get('status', '?')))} · files beside this page: model.pt,"
        f" model_card.json, {CARD_JSON}, {CARD_MD}</p>" + "".join(sections) + "</body></html>\n"
    )
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _site_table(card: Mapping[str, Any], status: admin_pb2.RunStatus | None) -> str:
    privacy: Mapping[str, Mapping[str, float]] = card.get("privacy", {})
    history = card.get("history", [])
    wire = {s.site_id: s for s in status.sites} if status is not None else {}
    sites = sorted(set(privacy) | set(wire) | {s for r in history for s in r["participants"]})
    rows = []
    for site in sites:
        w = wire.get(site)
        decision = word(PLAN_DECISIONS, w.decision) if w else "—"
        rows.append(
            [
                site,
                decision,
                ("yes" if w.alive else "no") if w else "—",
                float(privacy.get(site, {}).get("epsilon_run", w.epsilon_spent if w else 0.0)),
                privacy.get(site, {}).get("epsilon_lifetime"),
                sum(1 for r in history if site in r["survivors"]),
                sum(1 for r in history if site in r["participants"]),
                w.reason if w else "",
            ]
        )
    header = ["site", "decision", "alive", "ε run", "ε lifetime", "in sums", "asked", "reason"]
    return table_html(header, rows) + (
        '<p class="note">"in sums": aggregation steps (statistics, updates, metrics) whose'
        ' secure sum holds this site\'s release; "asked": steps it was a participant of.</p>'
    )
