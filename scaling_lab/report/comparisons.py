"""The report's comparisons, each row a difference with its interval and a verdict: the pairs of
``scaling_lab.study.families`` (feature networks against the repeated FPN, fast against softmax
and sum fusion, compound against single-dimension scaling at matched FLOPs, the grid's winner
against its runners-up), decided by ``scaling_lab.decisions`` with the family-wise correction
over each section."""

from __future__ import annotations

import pandas as pd

from scaling_lab import decisions, stats
from scaling_lab.report.run import Run
from scaling_lab.study import families as study_families

COMPOUND_GROUP = study_families.COMPOUND_GROUP
NO_VERDICT = "no verdict"


def rule(run: Run) -> decisions.DecisionRule:
    return decisions.DecisionRule.from_info(run.study)


def decided(run: Run) -> dict[str, tuple[study_families.Family, dict[tuple[str, str], stats.Comparison]]]:
    """Every family of the run with its comparisons decided (computed once per run)."""
    cached = getattr(run, "_decided", None)
    if cached is None:
        cached = {
            name: (family, decisions.decide(run.trials, family.pairs, run.main_metric, rule(run), combinations=family.combinations))
            for name, family in study_families.comparison_families(run.study, run.trials).items()
        }
        run._decided = cached
    return cached


def compare(run: Run, a: str, b: str) -> stats.Comparison | None:
    """Configuration ``a`` against ``b`` as its family decided it (None when no family compares them)."""
    for _, comparisons in decided(run).values():
        if (str(a), str(b)) in comparisons:
            return comparisons[(str(a), str(b))]
    return None


def excluded_reason(run: Run, a: str, b: str) -> str | None:
    for family, _ in decided(run).values():
        if (str(a), str(b)) in family.excluded:
            return family.excluded[(str(a), str(b))]
    return None


def with_comparisons(run: Run, rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """``rows`` plus ``difference``, ``diff_low``, ``diff_high``, ``level``, ``paired``, ``seeds_text``
    and ``verdict`` of the configuration in column ``a`` against the one in column ``b`` (a row
    comparing a configuration with itself gets the verdict "reference"; a pair no family decides,
    e.g. not at matched FLOPs, "no verdict" with its reason in ``note``)."""
    found, notes = [], []
    for x, y in zip(rows[a].astype(str), rows[b].astype(str)):
        found.append(compare(run, x, y) if x != y else None)
        notes.append("" if x == y or found[-1] is not None else excluded_reason(run, x, y) or "not compared")
    nan = float("nan")
    return rows.assign(
        difference=[c.difference if c else (0.0 if n == "" else nan) for c, n in zip(found, notes)],
        diff_low=[c.low if c else nan for c in found],
        diff_high=[c.high if c else nan for c in found],
        level=[c.level if c else nan for c in found],
        paired=[c.paired if c else False for c in found],
        seeds_text=[c.seeds_text() if c else "" for c in found],
        verdict=[c.verdict if c else ("reference" if n == "" else NO_VERDICT) for c, n in zip(found, notes)],
        note=[(c.note if c else n) for c, n in zip(found, notes)],
    )


def difference_text(row: pd.Series, factor: float) -> str:
    if row.get("verdict") == "reference":
        return "reference"
    if row.get("verdict") == NO_VERDICT:
        return str(row.get("note") or NO_VERDICT)
    comparison = stats.Comparison(row["difference"], row["diff_low"], row["diff_high"], bool(row["paired"]), 0, row["verdict"])
    level = f" at {row['level']:.1%}" if pd.notna(row.get("level")) and pd.notna(row["diff_low"]) else ""
    seeds = f" ({row['seeds_text']})" if row.get("seeds_text") else ""
    note = f"; {row['note']}" if row.get("note") else ""
    return comparison.text(factor) + level + seeds + note


def ablation_comparisons(run: Run, rows: pd.DataFrame) -> pd.DataFrame:
    """Each feature-network row against the repeated top-down FPN (with sum fusion if present)."""
    reference = study_families.feature_network_reference(rows)
    if reference is None:
        return rows.assign(difference=float("nan"), diff_low=float("nan"), diff_high=float("nan"), level=float("nan"), paired=False, seeds_text="", verdict="no reference", note="")
    return with_comparisons(run, rows.assign(_reference=reference), "config_id", "_reference").drop(columns="_reference")


def scaling_comparisons(run: Run, curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Compound against every other scaling rule at the same phi, with both sides' measured FLOPs
    ratios to the base; where they are more than 10 % apart, against the rule interpolated at
    compound's FLOPs (``rule_points`` says between which), else no verdict."""
    if COMPOUND_GROUP not in curves:
        return pd.DataFrame()
    points = study_families.scaling_points(study_families.configurations(run.trials))
    if points.empty:
        return points
    means = pd.concat(curves.values()).drop_duplicates("config_id").set_index("config_id")[run.main_metric]

    def rule_metric(row: pd.Series) -> float:
        if row["interpolated"] is None:
            return means.get(row["rule_id"], float("nan"))
        return sum(means.get(member, float("nan")) * weight for member, weight in row["interpolated"].weights)

    points = points.assign(
        compound_metric=points["compound_id"].map(means),
        rule_metric=points.apply(rule_metric, axis=1),
        rule_points=[found.describe() if found is not None else "measured" for found in points["interpolated"]],
    )
    return with_comparisons(run, points, "compound_id", "rule_id")


def runners_up(run: Run, grid: pd.DataFrame, winner: pd.Series) -> pd.DataFrame:
    """The grid's best other eligible cells, each against the winner."""
    found = study_families.grid_runners_up(run.study, run.trials)
    if found is None or not found[1]:
        return pd.DataFrame()
    best = grid[grid["config_id"].astype(str).isin(found[1])].sort_values(run.main_metric, ascending=False)
    return with_comparisons(run, best.assign(_winner=str(winner["config_id"])), "config_id", "_winner").drop(columns="_winner")


def unresolved_count(table: pd.DataFrame) -> int:
    return int((table["verdict"] == stats.UNRESOLVED).sum()) if "verdict" in table.columns else 0
