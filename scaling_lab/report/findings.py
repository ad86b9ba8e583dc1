"""The proxy study's findings as Markdown (``docs/proxy-findings.md``): for each of the papers'
two headline findings, our measured difference with its interval and verdict beside the paper's
number, the run's wall time, and what its adaptive repeats spent and left open.

The same blocks fill a hand-written document: ``refresh_document`` replaces the text between
``<!-- scaling-lab: NAME -->`` and ``<!-- /scaling-lab: NAME -->`` with the run's ``BLOCKS[NAME]``,
so a page's tables are always re-derived from its committed run folder (``scaling-lab report
RUN --document PAGE``; ``tests/test_proxy_findings_doc.py`` checks the committed page)."""

from __future__ import annotations

import datetime
import re
from typing import Callable

import pandas as pd

from scaling_lab import paper, stats
from scaling_lab.errors import ScalingLabError
from scaling_lab.report import analysis, comparisons
from scaling_lab.report.figures import scale
from scaling_lab.report.run import Run
from scaling_lab.study import adaptive
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
        f"| feature network | fusion | FLOPs vs FPN | our {metric} (95 % interval) | ours − FPN [interval: 95 % family-wise] | verdict | paper AP − FPN |",
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
        f"| phi | compound vs | compound FLOPs | its FLOPs | compound − it, {metric} [interval: 95 % family-wise] | verdict | paper top-1: compound − it |",
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


def _unit(run: Run) -> str:
    return " points" if scale(run.main_metric) != 1 else ""


def summary_lines(run: Run, configs: pd.DataFrame) -> list[str]:
    started = pd.to_datetime(run.trials.get("started"), errors="coerce", utc=True).min()
    finished = pd.to_datetime(run.trials.get("finished"), errors="coerce", utc=True).max()
    wall = (finished - started).total_seconds() if pd.notna(started) and pd.notna(finished) else float("nan")
    seeds = int(configs["n_seeds"].min()) if not configs.empty else 0
    return [
        f"{len(run.complete)} complete trials of {len(run.trials)}, at least {seeds} seed(s) per configuration; "
        f"wall time {'–' if wall != wall else datetime.timedelta(seconds=round(wall))} (first start to last finish), "
        f"hardware {run.study.get('hardware', {}).get('cpus', '?')} CPUs. Differences are paired by seed where both sides share "
        "two or more seeds. " + comparisons.rule(run).describe(factor=scale(run.main_metric), unit=_unit(run))
        + " The paper's numbers come from full COCO/ImageNet training: compare signs and verdicts, not magnitudes."
    ]


def repeats_lines(run: Run, configs: pd.DataFrame) -> list[str]:
    """What adaptive repeats spent and why they stopped, the seeds of each configuration, and for
    every comparison left open the seeds a fixed-repeats study would need for 80 % power against
    a gap of the margin (Bonferroni over its section, one look)."""
    repeats, found = run.study.get("repeats") or {}, run.study.get("adaptive_repeats") or {}
    if not repeats.get("until") or configs.empty:
        return ["Fixed repeats: no adaptive rounds in this run."]
    factor, rule = scale(run.main_metric), comparisons.rule(run)
    budget = ", ".join(f"{value:g} {name}" for name, value in (("trials", (repeats.get("budget") or {}).get("trials")), ("trial-hours", (repeats.get("budget") or {}).get("hours"))) if value)
    trials, hours = adaptive.spent(run.trials)  # what the budget counts
    stop = f"stopped: {found['reason']} ({found['comparisons'] - found['open']} of {found['comparisons']} comparisons resolved) after {found.get('rounds', 0)} round(s) beyond the first {rule.min_seeds} seeds" if found.get("stop") else "did not stop (the study was still running)"
    lines = [
        f"Adaptive repeats: {rule.min_seeds} to {rule.max_seeds} seeds per configuration until every comparison has a verdict, "
        f"margin ±{rule.margin * factor:g}{_unit(run)}{f', budget {budget}' if budget else ''}. The study {stop}. "
        f"It ran {trials} trials ({hours:.1f} trial-hours) over {len(configs)} configurations: fixed {rule.min_seeds} seeds is "
        f"{len(configs) * rule.min_seeds} trials, fixed {rule.max_seeds} seeds {len(configs) * rule.max_seeds}.",
        "",
        "| group | configuration | seeds |",
        "|---|---|---|",
        *(f"| {row['group']} | {row['summary']} | {row['n_seeds']} |" for _, row in configs.iterrows()),
        "",
        f"| section | comparison | {run.main_metric} difference [interval] | verdict | seeds for 80 % power at a gap of ±{rule.margin * factor:g}{_unit(run)} |",
        "|---|---|---|---|---|",
    ]
    # A configuration alone in its group is named by the group (compound, width, ...), else by what differs.
    alone = configs.groupby("group")["config_id"].transform("size") == 1
    labels = pd.Series(configs["group"].where(alone, configs["summary"]).to_numpy(), index=configs["config_id"].astype(str))
    for name, (family, decided) in comparisons.decided(run).items():
        for (a, b), comparison in decided.items():
            needed = stats.seeds_for_power(comparison.sd, comparison.df, rule.margin, alpha=(1 - rule.level) / max(len(family.pairs), 1)) if comparison.verdict == stats.UNRESOLVED else None
            power = needed.seeds_text() if needed else "–"
            lines.append(f"| {name} | {labels.get(a, a)} − {labels.get(b, b)} | {comparison.text(factor)} ({comparison.seeds_text()}) | {comparison.verdict} | {power} |")
    return lines


Lines = Callable[[Run, pd.DataFrame], list[str]]
BLOCKS: dict[str, Lines] = {"summary": summary_lines, "repeats": repeats_lines, "feature-networks": feature_network_lines, "scaling": scaling_lines}
_BLOCK = re.compile(r"(<!-- scaling-lab: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /scaling-lab: (?P=name) -->)", re.DOTALL)


def refresh_document(text: str, run: Run, where: str) -> str:
    """``text`` with each generated block re-derived from ``run`` (``where`` names the document in errors)."""
    configs = analysis.configurations(run)
    names = [match["name"] for match in _BLOCK.finditer(text)]
    unknown = sorted(set(names) - set(BLOCKS))
    if unknown or not names:
        raise ScalingLabError(
            f"{where}: {'unknown generated block(s) ' + ', '.join(unknown) if unknown else 'no generated blocks'}; "
            f"mark one with <!-- scaling-lab: NAME --> ... <!-- /scaling-lab: NAME -->, NAME one of {', '.join(BLOCKS)}"
        )
    return _BLOCK.sub(lambda match: match[1] + "\n".join(BLOCKS[match["name"]](run, configs)) + "\n" + match[4], text)


def findings_markdown(run: Run, figures: list[tuple[str, str]] = ()) -> str:
    """The findings page; ``figures`` are (relative path, title) of the report's PNGs to show."""
    configs = analysis.configurations(run)
    parts = [
        f"# Proxy findings: {run.name}",
        "",
        *summary_lines(run, configs),
        "",
        "## Repeats",
        "",
        *repeats_lines(run, configs),
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
