"""The proxy study's findings as Markdown (``docs/proxy-findings.md``): for each of the papers'
two headline findings, our measured difference with its 95 % interval and verdict beside the
paper's number, and the run's wall time."""

from __future__ import annotations

import datetime

import pandas as pd

from scaling_lab import paper
from scaling_lab.report import analysis, comparisons
from scaling_lab.report.figures import scale
from scaling_lab.report.run import Run
from scaling_lab.schema import interval_columns


def _row_text(comparison_row: pd.Series, factor: float) -> str:
    return comparisons.difference_text(comparison_row, factor)


def _paper_ap(feature_network: str, fusion: str) -> float | None:
    row = paper.feature_network_row(feature_network, fusion)
    return None if row is None else row.ap


def feature_network_lines(run: Run, configs: pd.DataFrame) -> list[str]:
    rows = analysis.ablation_table(run, configs)
    if rows.empty:
        return ["No feature-network comparison in this run."]
    metric, factor = run.main_metric, scale(run.main_metric)
    low, high = interval_columns(metric)
    rows = comparisons.ablation_comparisons(run, rows)
    baseline_ap = paper.FEATURE_NETWORKS[0].ap
    lines = [
        f"| feature network | fusion | FLOPs vs FPN | our {metric} (95 % interval) | ours − FPN [95 %] | verdict | paper AP − FPN |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in rows.iterrows():
        paper_ap = _paper_ap(row["feature_network"], row.get("fusion", ""))
        lines.append(
            f"| {row['paper_name'] or row['feature_network']} | {row.get('fusion', '')} | {row.get('flops_ratio', float('nan')):.2f}x "
            f"| {row[metric] * factor:.2f} [{row[low] * factor:.2f}, {row[high] * factor:.2f}] "
            f"| {_row_text(row, factor)} | {row['verdict']} | {'–' if paper_ap is None else f'{paper_ap - baseline_ap:+.2f}'} |"
        )
    weighted = rows[(rows["feature_network"] == "bifpn") & (rows["fusion"] == "fast")]
    unweighted = rows[(rows["feature_network"] == "bifpn") & (rows["fusion"] == "sum")]
    if not weighted.empty and not unweighted.empty:
        found = comparisons.compare(run, weighted["config_id"].iloc[0], unweighted["config_id"].iloc[0])
        paper_gain = paper.feature_network_row("bifpn", "fast").ap - paper.feature_network_row("bifpn", "sum").ap
        if found is not None:
            lines += ["", f"Weighted (fast) − unweighted (sum) BiFPN: {found.text(factor)} at {found.level:.1%} ({found.seeds_text()}), **{found.verdict}** (paper: {paper_gain:+.2f} AP)."]
    return lines


def scaling_lines(run: Run, configs: pd.DataFrame) -> list[str]:
    matched = comparisons.scaling_comparisons(run, analysis.scaling_groups(run, configs))
    if matched.empty:
        return ["No compound vs single-dimension comparison in this run."]
    metric, factor = run.main_metric, scale(run.main_metric)
    reference = {row.group: row.top1 for row in paper.SINGLE_DIMENSION_SCALING}
    lines = [
        f"| phi | compound vs | compound FLOPs | its FLOPs | compound − it, {metric} [95 %] | verdict | paper top-1: compound − it |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in matched.iterrows():
        gap = reference["compound"] - reference[row["rule"]] if row["rule"] in reference else None
        lines.append(
            f"| {row['phi']:g} | {row['rule']} | {row['compound_flops_ratio']:.2f}x | {row['rule_flops_ratio']:.2f}x{_interpolated(row)} "
            f"| {_row_text(row, factor)} | {row['verdict']} | {'–' if gap is None else f'{gap:+.1f}'} |"
        )
    return lines


def _interpolated(row: pd.Series) -> str:
    return f" ({row['rule_points']})" if row.get("rule_points", "measured") != "measured" else ""


def figure_lines(figures: list[tuple[str, str]]) -> list[str]:
    if not figures:
        return ["No figures: `scaling-lab report` writes them as PNGs when kaleido can find a Chromium."]
    return [line for path, title in figures for line in (f"### {title}", "", f"![{title}]({path})", "")]


def findings_markdown(run: Run, figures: list[tuple[str, str]] = ()) -> str:
    """The findings page; ``figures`` are (relative path, title) of the report's PNGs to show."""
    configs = analysis.configurations(run)
    complete = run.complete
    started = pd.to_datetime(run.trials.get("started"), errors="coerce", utc=True).min()
    finished = pd.to_datetime(run.trials.get("finished"), errors="coerce", utc=True).max()
    wall = (finished - started).total_seconds() if pd.notna(started) and pd.notna(finished) else float("nan")
    seeds = int(configs["n_seeds"].min()) if not configs.empty else 0
    parts = [
        f"# Proxy findings: {run.name}",
        "",
        f"{len(complete)} complete trials of {len(run.trials)}, at least {seeds} seed(s) per configuration; "
        f"wall time {'–' if wall != wall else datetime.timedelta(seconds=round(wall))} (first start to last finish), "
        f"hardware {run.study.get('hardware', {}).get('cpus', '?')} CPUs. Differences are paired by seed where both sides share "
        "two or more seeds. " + comparisons.rule(run).describe(factor=scale(run.main_metric), unit=" points" if scale(run.main_metric) != 1 else "")
        + " The paper's numbers come from full COCO/ImageNet training: compare signs and verdicts, not magnitudes.",
        "",
        "## 1. Feature networks (EfficientDet Table 5)",
        "",
        *feature_network_lines(run, configs),
        "",
        "## 2. Compound vs single-dimension scaling at matched FLOPs (EfficientNet Table 7 / Figure 3)",
        "",
        *scaling_lines(run, configs),
        "",
        "## Figures",
        "",
        *figure_lines(list(figures)),
    ]
    return "\n".join(parts)
