"""The report's scaling-law sections (``scaling_lab.laws``): fitted coefficients with their
confidence region, fitted scaling curves with predictions, proxy fidelity and error EDFs. Each
is added only where the study's data supports it; a fit that fails says why instead."""

from __future__ import annotations

import math

import pandas as pd

from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.curves import fit_rules
from scaling_lab.laws.design_space import error_edfs, sampled_groups
from scaling_lab.laws.fidelity import within_study
from scaling_lab.laws.surface import fit_surface
from scaling_lab.report import laws_figures
from scaling_lab.report.figures import human, scale
from scaling_lab.report.html import Page, definitions, paragraph, table
from scaling_lab.report.run import Run
from scaling_lab.study.winner import WinnerRule, decide_winner

PREDICT_AT = 2.0  # each curve's prediction is shown at this factor beyond its largest measured FLOPs


def _text(value: object) -> str:
    return str(value)


def add_coefficient_fit(page: Page, run: Run, configs: pd.DataFrame) -> None:
    if not {"param.alpha", "param.beta"} <= set(run.trials.columns):
        return
    try:
        fit = fit_surface(run.study, run.trials, str(run.directory))
    except ScalingLabError as exc:
        page.add("surface", "Fitted coefficients", paragraph(f"No response surface: {exc}"))
        return
    try:
        winner = decide_winner(run.trials, fit.group, WinnerRule.from_info(run.study, fit.group)).values
    except ScalingLabError:
        winner = None
    factor = scale(fit.metric)
    items = {"fit": fit.quality.text()}
    if not fit.quality.poor:
        for name, dimension in (("alpha", "depth"), ("beta", "width"), ("gamma", "resolution")):
            low, high = fit.intervals[name]
            chosen = f"; grid winner {winner[name]:g}" if winner and name in winner else ""
            items[f"fitted {name} ({dimension})"] = f"{fit.optimum[name]:.3f} [95 % {low:.3f}, {high:.3f}]{chosen}"
        low, high = fit.intervals["predicted"]
        items[f"predicted {fit.metric} at the optimum"] = f"{fit.predicted * factor:.2f} [95 % {low * factor:.2f}, {high * factor:.2f}]"
        if fit.on_edge:
            items["note"] = "the optimum lies on the edge of the grid: the best may lie outside; extend the grid there"
    page.add(
        "surface",
        "Fitted coefficients (response surface)",
        paragraph(
            f"A quadratic in log alpha and log beta fitted to the {len(fit.cells)} cells' seed means of group {fit.group!r}, maximized under "
            f"alpha·beta²·gamma² = {fit.target:g} inside the grid. Intervals and the region: 95 % of refits on seed-resampled means. "
            "A fit whose residuals exceed the seed noise reports no optimum."
        ),
        page.figure(laws_figures.surface_figure(fit, winner), "coefficient-fit"),
        definitions(items),
    )


def add_scaling_curves(page: Page, run: Run, configs: pd.DataFrame) -> None:
    if "flops" not in run.trials.columns:
        return
    try:
        fits, skipped = fit_rules(run.study, run.trials, str(run.directory))
    except ScalingLabError:
        return
    if not fits and not skipped:
        return
    parts = [paragraph(
        "Per scaling rule (and each other group's Pareto set), the metric against measured FLOPs with the form of the smallest "
        f"leave-one-out error; exponent intervals from seed-resampled refits; predictions at {PREDICT_AT:g}x the largest measured FLOPs "
        "are for one new trial (curve and seed noise) and are extrapolations. Activations grow as FLOPs^k across each rule's "
        "configurations (Dollár et al.: k near 1 for EfficientNet-style compound scaling, near 0.5 for fast scaling)."
    )]
    if fits:
        parts.append(page.figure(laws_figures.curves_figure(fits), "scaling-curves-fitted"))
        rows = []
        for rule, fit in fits.items():
            low, high = fit.exponent_interval
            target = fit.prediction(PREDICT_AT * fit.measured_range[1])
            factor = scale(fit.metric)
            rows.append({
                "rule": rule, "points": len(fit.cells), "form": fit.form.name, "rate": fit.form.rate,
                "exponent": f"{fit.exponent:.3g} [{low:.3g}, {high:.3g}]",
                "loo": ", ".join(f"{name} {value:.3g}" for name, value in fit.loo_rmse.items() if math.isfinite(value)),
                "activations": "–" if math.isnan(fit.activation_exponent) else f"{fit.activation_exponent:.2f}",
                "prediction": f"{target.value * factor:.2f} [{target.low * factor:.2f}, {target.high * factor:.2f}] at {human(target.flops)} (extrapolated)",
            })
        parts.append(table(pd.DataFrame(rows), {
            "rule": ("rule", _text), "points": ("configurations", _text), "form": ("form", _text), "rate": ("exponent of", _text),
            "exponent": ("exponent [95 %]", _text), "loo": ("leave-one-out rmse per form", _text),
            "activations": ("activations ∝ FLOPs^k", _text), "prediction": (f"predicted {run.main_metric} [95 % prediction]", _text),
        }))
    for rule, reason in skipped.items():
        parts.append(paragraph(f"{rule}: not fitted: {reason}"))
    page.add("scaling-laws", "Scaling laws", *parts)


def add_fidelity(page: Page, run: Run, configs: pd.DataFrame) -> None:
    if "curve" not in run.trials.columns:
        return
    try:
        groups = within_study(run.study, run.trials, str(run.directory))
    except ScalingLabError:
        return
    if not groups:
        return
    rows = pd.DataFrame([{"group": group, **vars(row), "same": "yes" if row.same_winner else "no"} for group, found in groups.items() for row in found])
    rows["tau_text"] = [f"{t:+.2f} [{lo:+.2f}, {hi:+.2f}]" for t, lo, hi in zip(rows["tau"], rows["low"], rows["high"])]
    page.add(
        "fidelity",
        "Proxy fidelity",
        paragraph(
            "Would a shorter budget have chosen the same? Each validation epoch's ranking of a group's configurations against the "
            "final ranking: Kendall tau with a 95 % interval (configurations and seeds redrawn), whether the early winner is the "
            "final one, how often seed replicates agree on that, and the early winner's final rank and verdict against the final winner."
        ),
        page.figure(laws_figures.fidelity_figure(groups), "proxy-fidelity"),
        table(rows, {
            "group": ("group", _text), "label": ("ranking at", _text), "configurations": ("configurations", _text),
            "tau_text": ("Kendall tau [95 %]", _text), "same": ("same winner", _text),
            "winner_agreement": ("winner agreement", lambda v: f"{v:.0%}"), "early_winner_final_rank": ("early winner's final rank", _text),
            "verdict": ("early vs final winner", _text),
        }),
    )


def add_design_space(page: Page, run: Run, configs: pd.DataFrame) -> None:
    if not sampled_groups(run.study) or "flops" not in run.trials.columns:
        return
    try:
        edfs = error_edfs(run.study, run.trials, str(run.directory))
    except ScalingLabError as exc:
        page.add("design-space", "Design spaces (error EDFs)", paragraph(f"No error EDF: {exc}"))
        return
    page.add(
        "design-space",
        "Design spaces (error EDFs)",
        paragraph("Randomly sampled models per group: the share with error below each value, each log-FLOPs bin weighted equally (a space that samples bigger models gains nothing from that)."),
        page.figure(laws_figures.edf_figure(edfs, run.main_metric), "error-edf"),
    )


SECTIONS = (add_coefficient_fit, add_scaling_curves, add_fidelity, add_design_space)
