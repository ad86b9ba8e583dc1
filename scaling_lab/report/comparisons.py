"""The report's comparisons, each row a difference with its 95 % interval and a verdict
(``scaling_lab.stats``): the feature networks against the repeated FPN (Table 5), fast against
softmax fusion (Table 6), compound against single-dimension scaling at the same phi, and the
grid's winner against its runners-up."""

from __future__ import annotations

import pandas as pd

from scaling_lab import paper, stats
from scaling_lab.report.run import Run

COMPOUND_GROUP = "compound"


def compare(run: Run, a: str, b: str) -> stats.Comparison:
    """Configuration ``a`` against ``b`` on the main metric (maximized), paired by seed where possible."""
    return stats.compare_configs(run.complete, a, b, run.main_metric)


def with_comparisons(run: Run, rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """``rows`` plus ``difference``, ``diff_low``, ``diff_high``, ``paired`` and ``verdict`` of the
    configuration in column ``a`` against the one in column ``b`` (a row comparing a
    configuration with itself gets the verdict "reference")."""
    found = [compare(run, x, y) if x != y else None for x, y in zip(rows[a].astype(str), rows[b].astype(str))]
    return rows.assign(
        difference=[c.difference if c else 0.0 for c in found],
        diff_low=[c.low if c else float("nan") for c in found],
        diff_high=[c.high if c else float("nan") for c in found],
        paired=[c.paired if c else False for c in found],
        verdict=[c.verdict if c else "reference" for c in found],
    )


def difference_text(row: pd.Series, factor: float) -> str:
    if row.get("verdict") == "reference":
        return "reference"
    comparison = stats.Comparison(row["difference"], row["diff_low"], row["diff_high"], bool(row["paired"]), 0, row["verdict"])
    return comparison.text(factor) + (" (paired)" if comparison.paired else "")


def ablation_comparisons(run: Run, rows: pd.DataFrame) -> pd.DataFrame:
    """Each feature-network row against the repeated top-down FPN (with sum fusion if present)."""
    baseline = rows[rows["feature_network"] == paper.FEATURE_NETWORK_BASELINE]
    baseline = baseline.sort_values("fusion", key=lambda fusion: fusion != "sum") if "fusion" in baseline.columns else baseline
    if baseline.empty:
        return rows.assign(difference=float("nan"), diff_low=float("nan"), diff_high=float("nan"), paired=False, verdict="no reference")
    return with_comparisons(run, rows.assign(_reference=baseline["config_id"].iloc[0]), "config_id", "_reference").drop(columns="_reference")


def scaling_comparisons(run: Run, curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Compound against every other scaling rule at the same phi (the same FLOPs target), with
    both sides' measured FLOPs ratios to the base."""
    if COMPOUND_GROUP not in curves:
        return pd.DataFrame()
    compound = curves[COMPOUND_GROUP]
    rows = []
    for group, curve in curves.items():
        if group == COMPOUND_GROUP:
            continue
        for _, point in curve[curve["param.phi"] > 0].iterrows():
            match = compound[compound["param.phi"] == point["param.phi"]]
            if match.empty:
                continue
            rows.append(
                {
                    "phi": point["param.phi"],
                    "rule": group,
                    "compound_id": match.iloc[0]["config_id"],
                    "rule_id": point["config_id"],
                    "compound_flops_ratio": match.iloc[0].get("flops_ratio"),
                    "rule_flops_ratio": point.get("flops_ratio"),
                    "compound_metric": match.iloc[0][run.main_metric],
                    "rule_metric": point[run.main_metric],
                }
            )
    if not rows:
        return pd.DataFrame()
    return with_comparisons(run, pd.DataFrame(rows).sort_values(["phi", "rule"]).reset_index(drop=True), "compound_id", "rule_id")


def runners_up(run: Run, grid: pd.DataFrame, winner: pd.Series, count: int = 5) -> pd.DataFrame:
    """The best ``count`` other grid cells within the FLOPs tolerance, each against the winner."""
    eligible = grid[grid["eligible"] & (grid["config_id"] != winner["config_id"])]
    if eligible.empty:
        return pd.DataFrame()
    best = eligible.sort_values(run.main_metric, ascending=False).head(count)
    return with_comparisons(run, best.assign(_winner=winner["config_id"]), "config_id", "_winner").drop(columns="_winner")


def indistinguishable_count(table: pd.DataFrame) -> int:
    return int((table["verdict"] == stats.WITHIN_NOISE).sum()) if "verdict" in table.columns else 0
