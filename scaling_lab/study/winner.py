"""The one rule that picks a group's winning configuration: the runner's ``best`` parameters,
``scaling-lab derive`` and the report's compound-scaling section all call ``decide_winner``.

A configuration competes only with every planned seed complete (one with fewer is flagged
``incomplete`` and cannot win on its surviving seeds) and with its measured costs inside the
group's own constraints. The winner has the best mean of the study's first objective over
seeds, in that objective's direction; ties go to the smaller configuration id, so every
worker and every reader picks the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from scaling_lab.errors import ScalingLabError
from scaling_lab.stats import complete_trials
from scaling_lab.study.search_space import Constraint


@dataclass(frozen=True)
class WinnerRule:
    metric: str
    direction: str
    seeds: int
    constraints: tuple[Constraint, ...] = ()
    base_costs: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_info(cls, info: Mapping[str, Any], group: str) -> "WinnerRule":
        """The rule as ``study.json`` states it (objectives, seeds, the group's constraints)."""
        objective = info["objectives"][0]
        group_info = next((g for g in info.get("groups") or [] if g.get("name") == group), {})
        constraints = tuple(Constraint(**c) for c in group_info.get("constraints") or [])
        seeds = info.get("seeds")
        return cls(objective["metric"], objective["direction"], len(seeds) if seeds else 1, constraints, info.get("base_costs") or {})


@dataclass(frozen=True)
class Winner:
    group: str
    config_id: str
    metric: str
    score: float
    seeds: int
    values: dict[str, Any]
    ranking: pd.DataFrame  # every configuration of the group: mean, sd, complete_seeds, incomplete, eligible


def plain(value: Any) -> Any:
    """A JSON-native value (numpy scalars from a table are not)."""
    return value.item() if isinstance(value, np.generic) else value


def _violation(rule: WinnerRule, row: pd.Series) -> str | None:
    for constraint in rule.constraints:
        value = row.get(constraint.cost)
        base = rule.base_costs.get(constraint.cost)
        if constraint.relative and base is None and constraint.cost == "flops" and pd.notna(row.get("flops_ratio")):
            value, base = row["flops_ratio"], 1.0
        if value is None or pd.isna(value) or (constraint.relative and not base):
            return f"{constraint.cost} was not measured"
        reason = constraint.violation(float(value), float(base) if base else 1.0)
        if reason:
            return reason
    return None


def rank_configurations(frame: pd.DataFrame, group: str, rule: WinnerRule) -> pd.DataFrame:
    """The group's configurations with their mean, sd and count of complete seeds, and whether
    each may win (``eligible``), best first."""
    if frame.empty or rule.metric not in frame.columns:
        return pd.DataFrame(columns=["config_id", "mean", "sd", "complete_seeds", "incomplete", "eligible"])
    rows = frame[frame["group"].astype(str) == group]
    done = complete_trials(rows)
    records = []
    for cid, trials in rows.groupby("config_id", sort=True):
        scores = done.loc[done["config_id"] == cid, rule.metric].astype(float)
        first = trials.iloc[0]
        complete = int(scores.notna().sum())
        reason = _violation(rule, done[done["config_id"] == cid].iloc[0]) if complete else None
        records.append(
            {
                "config_id": cid,
                "mean": float(scores.mean()) if complete else math.nan,
                "sd": float(scores.std(ddof=1)) if complete > 1 else math.nan,
                "complete_seeds": complete,
                "incomplete": complete < rule.seeds,
                "eligible": complete >= rule.seeds and reason is None,
                "values": {c[len("param."):]: plain(first[c]) for c in rows.columns if c.startswith("param.") and pd.notna(first[c])},
            }
        )
    ranking = pd.DataFrame(records)
    if ranking.empty:
        return ranking
    ascending = rule.direction == "minimize"
    ranking["_order"] = ranking["mean"] if ascending else -ranking["mean"]
    ranking = ranking.sort_values(["eligible", "_order", "config_id"], ascending=[False, True, True], na_position="last")
    return ranking.drop(columns="_order").reset_index(drop=True)


def decide_winner(frame: pd.DataFrame, group: str, rule: WinnerRule, where: str = "study") -> Winner:
    """The group's winning configuration by ``rule``; an error when none may win."""
    ranking = rank_configurations(frame, group, rule)
    if ranking.empty or not ranking["eligible"].any():
        incomplete = int(ranking["incomplete"].sum()) if not ranking.empty else 0
        raise ScalingLabError(
            f"{where}: group {group!r} has no configuration with all {rule.seeds} seed(s) complete within its constraints "
            f"({len(ranking)} configuration(s), {incomplete} incomplete), so no winner can be decided; "
            "see its failures with scaling-lab status"
        )
    best = ranking.iloc[0]
    return Winner(group, str(best["config_id"]), rule.metric, float(best["mean"]), int(best["complete_seeds"]), dict(best["values"]), ranking)


def derive_group(info: Mapping[str, Any], frame: pd.DataFrame) -> str:
    """The study's compound grid group: ``derive.group`` from the study, else the one group that
    searches alpha and beta over the most configurations."""
    if info.get("derive_group"):
        return str(info["derive_group"])
    candidates = []
    if {"param.alpha", "param.beta"} <= set(frame.columns):
        for group, rows in frame.groupby("group"):
            searched = rows.dropna(subset=["param.alpha", "param.beta"])
            if not searched.empty:
                candidates.append((searched[["param.alpha", "param.beta"]].drop_duplicates().shape[0], str(group)))
    if not candidates:
        raise ScalingLabError(f"{info.get('study_file')}: no group of this study searches alpha and beta; derive needs a compound grid (see studies/compound_grid.yaml)")
    return max(candidates)[1]
