"""The report's sections; each is added only when the study's data supports it."""

from __future__ import annotations

import datetime
import html
from typing import Any, Callable

import pandas as pd

from scaling_lab.report import analysis, comparisons, figures, laws
from scaling_lab.report.figures import human, scale
from scaling_lab.report.formats import interval, mean_std, number, percent, ratio, text
from scaling_lab.report.html import Page, definitions, paragraph, preformatted, table
from scaling_lab.report.paper_tables import add_paper
from scaling_lab.report.run import Run
from scaling_lab.schema import ACCURACY_METRICS, PLOTTED_COSTS, interval_columns

Section = Callable[[Page, Run, pd.DataFrame], None]


def with_interval_text(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric_text`` (mean ± sd) and ``interval_text`` (95 % interval) columns for a table."""
    if frame.empty:
        return frame.assign(metric_text=[], interval_text=[])
    texts = frame.apply(interval(metric), axis=1) if interval_columns(metric)[0] in frame.columns else "–"
    return frame.assign(metric_text=mean_std(frame, metric), interval_text=texts)


def comparison_columns(metric: str, against: str) -> dict[str, Any]:
    """Table columns of a comparison (``add_difference_text`` after ``comparisons.with_comparisons``)."""
    unit = " (points)" if scale(metric) != 1 else ""
    return {
        "difference_text": (f"{metric} difference{unit}, {against} [95 % interval]", text),
        "verdict": ("verdict", text),
    }


def add_difference_text(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    factor = scale(metric)
    return frame.assign(difference_text=[comparisons.difference_text(row, factor) for _, row in frame.iterrows()]) if not frame.empty else frame


def interval_note(run: Run) -> str:
    """How intervals and verdicts are made: the method, the level and the margin."""
    unit = " points" if scale(run.main_metric) != 1 else ""
    return (
        "A configuration's interval is 95 % over its seeds (Student t); with one seed, over the seed noise pooled from the "
        "configurations with two or more, else its trial's bootstrap over validation images (which leaves training noise out). "
        "A difference is paired over the seeds both sides share (two or more; the seeds used are listed), else Welch; "
        "a side with one seed needs the pooled seed noise, or the comparison stays unresolved: two one-seed trials scored on "
        "the same images then show a paired bootstrap over those images, which compares the two trained models only. "
        + comparisons.rule(run).describe(scale(run.main_metric), unit)
    )


def build_page(run: Run) -> Page:
    """Every section of ``SECTIONS`` in order, given the run and its configurations (means over seeds)."""
    page = Page(f"scaling-lab report: {run.name}")
    configs = analysis.configurations(run)
    for section in SECTIONS:
        section(page, run, configs)
    return page


def header(run: Run) -> str:
    counts = analysis.state_counts(run)
    planned = run.study.get("planned_trials")
    done = ", ".join(f"{n} {state}" for state, n in counts.items())
    parts = [f"<h1>{html.escape(run.name)}</h1>", paragraph(f"{len(run.trials)} trials recorded ({done})" + (f" of {planned} planned" if planned else "") + f"; main metric {run.main_metric}.")]
    if not run.finished:
        parts.append(paragraph("Partial results: the study was still running when this report was made.", "banner"))
    if run.complete.empty and not run.trials.empty:
        parts.append(paragraph("No trial is complete, so there is nothing to plot or compare: the trials and their reasons are listed under Trials.", "banner"))
    return "\n".join(parts)


def add_pareto(page: Page, run: Run, configs: pd.DataFrame) -> None:
    metric = run.main_metric
    costs = [c for c in PLOTTED_COSTS if c in configs.columns and configs.dropna(subset=[metric, c]).shape[0] > 0]
    if configs.empty or not costs:
        return
    seeds = int(configs["n_seeds"].max())
    objectives = ", ".join(f"{o['metric']} ({o['direction']})" for o in run.study.get("objectives") or [])
    columns = {
        "summary": ("configuration", text),
        "group": ("group", text),
        "n_seeds": ("seeds", lambda v: f"{v:g}"),
        "metric_text": (f"{metric} mean ± sd (%)" if metric in ACCURACY_METRICS else metric, text),
        **{c: (c, human) for c in costs},
    }
    columns["interval_text"] = ("95 % interval", text)
    columns["status"] = ("front", text)
    labelled = with_interval_text(configs, metric).assign(
        status=["on the front" if on else "possibly on the front" if possibly else "dominated" for on, possibly in zip(configs["on_front"], configs["possibly_on_front"])]
    )
    front = labelled[labelled["possibly_on_front"]].sort_values(costs[0])
    page.add(
        "pareto",
        "Pareto fronts",
        paragraph(
            f"Each point is one configuration: the mean over its seeds (up to {seeds}), error bars its 95 % interval; "
            "fronts are computed on the means. Filled points are on the front; open diamonds are \"possibly on the front\" "
            "(their interval reaches it); faint points are dominated. Trials that did not complete are counted and listed under Trials. "
            + interval_note(run)
        ),
        *(page.figure(figures.pareto_figure(run, configs, cost), f"pareto-{cost}") for cost in costs),
        f"<h3>Configurations on or possibly on the front of all objectives ({html.escape(objectives or metric)})</h3>",
        table(front, columns, sortable=True),
        "<h3>All configurations (click a header to sort)</h3>",
        table(labelled.sort_values(metric, ascending=False), columns, sortable=True),
    )


def add_ablation(page: Page, run: Run, configs: pd.DataFrame) -> None:
    rows = analysis.ablation_table(run, configs)
    if rows.empty:
        return
    metric = run.main_metric
    rows = add_difference_text(comparisons.ablation_comparisons(run, with_interval_text(rows, metric)), metric)
    columns = {
        "feature_network": ("feature network", text),
        "fusion": ("fusion", text),
        "paper_name": ("paper's name", text),
        "n_seeds": ("seeds", lambda v: f"{v:g}"),
        "metric_text": (f"{metric} mean ± sd (%)", text),
        "interval_text": ("95 % interval", text),
        **comparison_columns(metric, "vs FPN"),
        "params_ratio": ("#params ratio", ratio),
        "flops_ratio": ("#FLOPs ratio", ratio),
    }
    if "latency_ms" in rows.columns:
        columns["latency_ms"] = ("latency (ms)", number())
    note = "Ratios and differences are relative to the repeated top-down FPN." if rows["params_ratio"].notna().any() else "The study has no repeated-FPN configuration, so no ratios."
    page.add("ablation", "Feature-network ablation (EfficientDet Table 5 form)", paragraph(note + " " + interval_note(run)), table(rows, columns, sortable=True))


def add_fusion(page: Page, run: Run, configs: pd.DataFrame) -> None:
    pairs = analysis.fusion_pairs(run, configs)
    if pairs.empty:
        return
    metric = run.main_metric
    pairs = add_difference_text(comparisons.with_comparisons(run, pairs, "config_id_fast", "config_id_softmax"), metric)
    columns = {
        "configuration": ("configuration", text),
        f"{metric}_softmax": (f"softmax {metric}", percent(metric)),
        f"{metric}_fast": (f"fast {metric}", percent(metric)),
        **comparison_columns(metric, "fast − softmax"),
    }
    if "speedup" in pairs.columns:
        columns.update({"latency_ms_softmax": ("softmax latency (ms)", number()), "latency_ms_fast": ("fast latency (ms)", number()), "speedup": ("fast speedup", ratio)})
    page.add("fusion", "Softmax vs fast normalized fusion (EfficientDet Table 6 form)", paragraph(interval_note(run)), table(pairs, columns))


def add_compound(page: Page, run: Run, configs: pd.DataFrame) -> None:
    grid = analysis.compound_grid(run, configs)
    curves = analysis.scaling_groups(run, configs)
    if grid.empty and not curves:
        return
    parts = []
    if not grid.empty:
        chosen = analysis.derived_coefficients(run, grid)
        constraint = analysis.grid_constraint(run, str(grid["group"].iloc[0]))
        parts.append(page.figure(figures.grid_heatmap(run, grid, chosen), "compound-grid"))
        if chosen is None:
            parts.append(paragraph(f"No grid configuration has every seed complete within the group's constraints ({constraint}), so no coefficients are derived."))
        else:
            parts.append(
                definitions(
                    {
                        "derived alpha (depth)": f"{chosen['param.alpha']:g}",
                        "derived beta (width)": f"{chosen['param.beta']:g}",
                        "derived gamma (resolution)": f"{chosen['param.gamma']:g}",
                        "FLOPs ratio": f"{chosen['grid_flops_ratio']:.3f} (measured; constraint {constraint})",
                        run.main_metric: mean_std(chosen.to_frame().T, run.main_metric).iloc[0],
                    }
                )
            )
            others = add_difference_text(comparisons.runners_up(run, grid, chosen), run.main_metric)
            if not others.empty:
                open_count = comparisons.unresolved_count(others)
                parts += [
                    f"<h3>The grid's winner against its runners-up (those that may win: every seed complete, within the group's constraints) ({open_count} unresolved)</h3>",
                    table(
                        with_interval_text(others, run.main_metric),
                        {
                            "summary": ("configuration", text),
                            "n_seeds": ("seeds", lambda v: f"{v:g}"),
                            "metric_text": (f"{run.main_metric} mean ± sd (%)", text),
                            "interval_text": ("95 % interval", text),
                            **comparison_columns(run.main_metric, "runner-up − winner"),
                        },
                    ),
                ]
    if curves:
        parts.append(page.figure(figures.scaling_figure(run, curves), "scaling-rules"))
        matched = add_difference_text(comparisons.scaling_comparisons(run, curves), run.main_metric)
        if not matched.empty:
            parts += [
                "<h3>Compound against single-dimension scaling at the same phi (FLOPs target 2^phi)</h3>",
                paragraph(
                    "Measured FLOPs ratios to the base beside each difference: a comparison is fair only where they match. Where the "
                    "rule's point at that phi is more than 10 % off compound's FLOPs, the rule is read at compound's FLOPs, interpolated "
                    "linearly in log FLOPs between the two points of its curve around them, per seed (so still paired); where its curve "
                    "does not reach around them, no verdict. " + interval_note(run)
                ),
                table(
                    matched,
                    {
                        "phi": ("phi", lambda v: f"{v:g}"),
                        "rule": ("against", text),
                        "compound_flops_ratio": ("compound FLOPs", ratio),
                        "rule_flops_ratio": ("its FLOPs", ratio),
                        "rule_points": (f"its {run.main_metric}", text),
                        "compound_metric": (f"compound {run.main_metric}", percent(run.main_metric)),
                        "rule_metric": (f"its {run.main_metric}", percent(run.main_metric)),
                        **comparison_columns(run.main_metric, "compound − it"),
                    },
                ),
            ]
    page.add("compound", "Compound scaling", *parts)


def add_training_curves(page: Page, run: Run, configs: pd.DataFrame) -> None:
    best = analysis.best_trials(run)
    if not best.empty:
        page.add("curves", "Training curves", page.figure(figures.training_curves_figure(run, best), "training-curves"))


def add_trials(page: Page, run: Run, configs: pd.DataFrame) -> None:
    trials = run.trials.copy()
    trials["summary"] = trials["config_id"].map(analysis.spec_summaries(run))
    metrics = [m for m in ACCURACY_METRICS if m in trials.columns and trials[m].notna().any()]
    bootstrapped = [m for m in metrics if interval_columns(m)[0] in trials.columns and trials[interval_columns(m)[0]].notna().any()]
    for metric in bootstrapped:
        trials[f"{metric}_interval"] = trials.apply(interval(metric), axis=1)
    costs = [c for c in (*PLOTTED_COSTS, "flops_ratio", "wall_time_s", "epochs_done") if c in trials.columns and trials[c].notna().any()]
    columns = {
        "trial_id": ("trial", lambda v: f"{v:g}"),
        "state": ("state", text),
        "group": ("group", text),
        "config_id": ("config", text),
        **({"seed": ("seed", lambda v: text(v) if pd.isna(v) else f"{v:g}")} if "seed" in trials.columns else {}),
        "summary": ("configuration", text),
        **{m: (m, percent(m)) for m in metrics},
        **{f"{m}_interval": (f"{m} 95 % (bootstrap over images)", text) for m in bootstrapped},
        **{c: (c, human) for c in costs},
        "error": ("error", text),
    }
    unfinished = trials[trials["state"] != "complete"]
    parts = []
    if not unfinished.empty:
        counts = ", ".join(f"{n} {state}" for state, n in analysis.state_counts(run).items() if state != "complete")
        parts += [f"<h3>Not complete: {html.escape(counts)}</h3>", table(unfinished, {c: columns[c] for c in ("trial_id", "state", "group", "summary", "error")})]
    parts += ["<h3>All trials (click a header to sort)</h3>", table(trials, columns, sortable=True)]
    page.add("trials", "Trials", *parts)


def add_provenance(page: Page, run: Run, configs: pd.DataFrame) -> None:
    study = run.study
    wall = run.trials["wall_time_s"].sum() if "wall_time_s" in run.trials.columns else float("nan")
    items = {
        "study file": text(study.get("study_file")),
        "experiment": text(study.get("experiment")),
        "created": text(study.get("created")),
        "finished": "yes" if run.finished else "no (partial results)",
        "git commit": text(study.get("git_commit")),
        "total compute (sum of trial wall time)": "–" if pd.isna(wall) else str(datetime.timedelta(seconds=round(wall))),
        "run folder": str(run.directory),
        **{f"hardware: {k}": text(v) for k, v in (study.get("hardware") or {}).items()},
        **{f"version: {k}": text(v) for k, v in (study.get("versions") or {}).items()},
    }
    parts = [definitions(items)]
    if study.get("study_yaml"):
        parts.append(preformatted(study["study_yaml"], "study YAML"))
    page.add("provenance", "Provenance", *parts)


# The report's sections in page order. A section is a function of the page, the run and its
# configurations that adds itself (``page.add``) only where the study's data supports it; a new
# section is one function added here.
SECTIONS: list[Section] = [
    add_pareto, add_ablation, add_fusion, add_compound, *laws.SECTIONS, add_training_curves, add_paper, add_trials, add_provenance,
]
