"""The comparisons a study's report makes, as families of configuration pairs: decided here once,
from the results table and ``study.json``, for the report's sections and for the adaptive
repeats that add seeds where a comparison is still open.

- ``feature networks``: each feature network against the repeated top-down FPN (EfficientDet
  Table 5; sum fusion preferred for the reference);
- ``fusion``: fast against softmax and against sum fusion, configurations otherwise equal
  (Table 6, and weighted against unweighted BiFPN);
- ``scaling``: compound against each single-dimension rule at the same phi where the two
  measured FLOPs are within ``FLOPS_TOLERANCE`` of each other; else against the rule's metric
  interpolated linearly in log FLOPs at compound's measured FLOPs between the two points of the
  rule's curve around it (``Interpolated``; per seed, so still paired); else ``excluded``, no verdict;
- ``grid``: the grid's winner against its best ``RUNNERS_UP`` eligible runners-up.

Each family is one report section's comparisons: ``scaling_lab.decisions`` corrects over it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from scaling_lab import paper
from scaling_lab.errors import ScalingLabError
from scaling_lab.spec import BackboneSpec, DetectorSpec
from scaling_lab.stats import complete_trials
from scaling_lab.study.winner import WinnerRule, decide_winner, derive_group, rank_configurations

FEATURE_NETWORKS, FUSION, SCALING, GRID = "feature networks", "fusion", "scaling", "grid"
COMPOUND_GROUP = "compound"
NON_SCALING_GROUPS = ("", "grid", "ablation")
FLOPS_TOLERANCE = 0.10  # a "matched FLOPs" comparison whose sides measure further apart gets no verdict
RUNNERS_UP = 5
FAST_AGAINST = ("softmax", "sum")
_SPEC_FIELDS = frozenset(f.name for spec in (DetectorSpec, BackboneSpec) for f in dataclasses.fields(spec))


@dataclass(frozen=True)
class Family:
    """One section's comparisons: ``pairs`` of (a, b) config ids, each read as ``a - b``, and the
    pairs shown without a verdict with the reason (``excluded``)."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    excluded: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # an id of ``pairs`` that is no configuration -> the configurations it combines, with weights
    combinations: Mapping[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Interpolated:
    """A scaling rule's metric at ``flops_ratio`` (compound's measured FLOPs), interpolated
    linearly in log FLOPs between two of the rule's configurations around it."""

    rule: str
    lower: str
    upper: str
    lower_ratio: float
    upper_ratio: float
    flops_ratio: float

    @property
    def weights(self) -> tuple[tuple[str, float], ...]:
        upper = math.log(self.flops_ratio / self.lower_ratio) / math.log(self.upper_ratio / self.lower_ratio)
        return (self.lower, 1 - upper), (self.upper, upper)

    @property
    def config_id(self) -> str:
        return f"{self.rule} at {self.flops_ratio:.4g}x (interpolated {self.lower} ~ {self.upper})"

    def describe(self) -> str:
        return f"interpolated in log FLOPs between {self.lower_ratio:.2f}x and {self.upper_ratio:.2f}x"


def configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration with complete trials: its first row's spec and parameters,
    its group, and its mean measured ``flops_ratio``."""
    done = complete_trials(frame)
    if done.empty or "config_id" not in done.columns:
        return pd.DataFrame()
    firsts = done.groupby("config_id", sort=False).first()
    if "flops_ratio" in done.columns:
        firsts["flops_ratio"] = done.groupby("config_id", sort=False)["flops_ratio"].mean()
    if "group" not in firsts.columns:
        firsts["group"] = ""
    return firsts.reset_index()


def spec_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("backbone.") or c in _SPEC_FIELDS]


def ablation_rows(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations that compare feature networks: group ``ablation`` if present, else the
    groups in which the feature network varies (not those that scale one of them)."""
    if configs.empty or "feature_network" not in configs.columns or configs["feature_network"].nunique() < 2:
        return configs.iloc[0:0]
    if (configs["group"] == "ablation").any():
        return configs[configs["group"] == "ablation"]
    return configs[configs.groupby("group")["feature_network"].transform("nunique") > 1]


def feature_network_reference(rows: pd.DataFrame) -> str | None:
    """The repeated top-down FPN the feature networks are compared with (sum fusion preferred)."""
    baseline = rows[rows["feature_network"] == paper.FEATURE_NETWORK_BASELINE]
    if "fusion" in baseline.columns:
        baseline = baseline.sort_values("fusion", key=lambda fusion: fusion != "sum", kind="stable")
    return None if baseline.empty else str(baseline["config_id"].iloc[0])


def _feature_networks(configs: pd.DataFrame) -> Family:
    rows = ablation_rows(configs)
    reference = feature_network_reference(rows) if not rows.empty else None
    pairs = [] if reference is None else [(str(c), reference) for c in rows["config_id"] if str(c) != reference]
    return Family(FEATURE_NETWORKS, tuple(pairs))


def fusion_pairs(configs: pd.DataFrame, against: str) -> pd.DataFrame:
    """Configurations equal but for fast against ``against`` fusion: columns ``config_id_fast``,
    ``config_id_<against>`` and the two rows' other columns suffixed likewise."""
    if configs.empty or "fusion" not in configs.columns:
        return pd.DataFrame()
    others = ["group", *(c for c in spec_columns(configs) if c != "fusion")]
    keyed = configs.assign(_key=configs[others].astype(str).agg("|".join, axis=1))
    return keyed[keyed["fusion"] == "fast"].merge(keyed[keyed["fusion"] == against], on="_key", suffixes=("_fast", f"_{against}")).drop(columns="_key")


def _fusion(configs: pd.DataFrame) -> Family:
    pairs = []
    for against in FAST_AGAINST:
        found = fusion_pairs(configs, against)
        pairs += [] if found.empty else list(zip(found["config_id_fast"].astype(str), found[f"config_id_{against}"].astype(str)))
    return Family(FUSION, tuple(pairs))


def rule_curve(scaled: pd.DataFrame, rule: str) -> pd.DataFrame:
    """A scaling rule's points by measured FLOPs ratio: its group's configurations and the
    unscaled base (phi 0, which every rule shares)."""
    points = scaled[(scaled["group"] == rule) | (scaled["param.phi"] == 0)].dropna(subset=["flops_ratio"])
    return points.drop_duplicates("config_id").sort_values("flops_ratio")


def interpolation(curve: pd.DataFrame, rule: str, flops_ratio: float) -> Interpolated | None:
    """The rule's metric at ``flops_ratio`` from its nearest points below and above it, or None
    where the curve does not reach around it."""
    ratios = curve["flops_ratio"].astype(float)
    below, above = curve[ratios <= flops_ratio], curve[ratios >= flops_ratio]
    if below.empty or above.empty or float(below["flops_ratio"].iloc[-1]) == float(above["flops_ratio"].iloc[0]):
        return None
    lower, upper = below.iloc[-1], above.iloc[0]
    return Interpolated(rule, str(lower["config_id"]), str(upper["config_id"]), float(lower["flops_ratio"]), float(upper["flops_ratio"]), float(flops_ratio))


def scaling_points(configs: pd.DataFrame) -> pd.DataFrame:
    """Compound against every other scaling group at the same phi > 0: ``phi``, ``rule``,
    ``compound_id``, ``rule_id`` and both measured FLOPs ratios to the base. Where the rule's
    point is not at matched FLOPs but its curve reaches around compound's, ``rule_id`` is the
    ``Interpolated`` point's id at compound's FLOPs (``interpolated``; else None)."""
    if configs.empty or "param.phi" not in configs.columns or COMPOUND_GROUP not in set(configs["group"]):
        return pd.DataFrame()
    scaled = configs[~configs["group"].isin(NON_SCALING_GROUPS) & (configs["param.phi"] >= 0)]
    compound = scaled[(scaled["group"] == COMPOUND_GROUP) & (scaled["param.phi"] > 0)]
    rows = []
    for _, point in scaled[(scaled["group"] != COMPOUND_GROUP) & (scaled["param.phi"] > 0)].iterrows():
        match = compound[compound["param.phi"] == point["param.phi"]]
        if match.empty:
            continue
        row = {
            "phi": point["param.phi"], "rule": point["group"], "compound_id": str(match.iloc[0]["config_id"]), "rule_id": str(point["config_id"]),
            "compound_flops_ratio": match.iloc[0].get("flops_ratio"), "rule_flops_ratio": point.get("flops_ratio"), "interpolated": None,
        }
        if flops_mismatch(row["compound_flops_ratio"], row["rule_flops_ratio"]) and not pd.isna(row["rule_flops_ratio"]) and not pd.isna(row["compound_flops_ratio"]):
            found = interpolation(rule_curve(scaled, point["group"]), point["group"], float(row["compound_flops_ratio"]))
            if found is not None:
                row.update(rule_id=found.config_id, rule_flops_ratio=found.flops_ratio, interpolated=found)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["phi", "rule"]).reset_index(drop=True) if rows else pd.DataFrame()


def flops_mismatch(compound_ratio: Any, rule_ratio: Any) -> str | None:
    """Why two sides are not at matched FLOPs (measured more than ``FLOPS_TOLERANCE`` apart), or None."""
    if pd.isna(compound_ratio) or pd.isna(rule_ratio):
        return "FLOPs not measured: no verdict"
    apart = float(rule_ratio) / float(compound_ratio) - 1
    if abs(apart) > FLOPS_TOLERANCE:
        return f"not at matched FLOPs ({float(rule_ratio):.2f}x vs {float(compound_ratio):.2f}x, {apart:+.0%}): no verdict"
    return None


def _scaling(configs: pd.DataFrame) -> Family:
    points = scaling_points(configs)
    pairs, excluded, combinations = [], {}, {}
    for _, row in points.iterrows():
        pair = (row["compound_id"], row["rule_id"])
        reason = flops_mismatch(row["compound_flops_ratio"], row["rule_flops_ratio"])
        if reason:
            excluded[pair] = reason
        else:
            pairs.append(pair)
            if row["interpolated"] is not None:
                combinations[row["rule_id"]] = row["interpolated"].weights
    return Family(SCALING, tuple(pairs), excluded, combinations)


def grid_runners_up(info: Mapping[str, Any], frame: pd.DataFrame) -> tuple[str, list[str]] | None:
    """The grid's winner (the study's winner rule) and its best eligible runners-up, or None
    without a grid of two or more cells or a winner."""
    if not {"param.alpha", "param.beta"} <= set(frame.columns):
        return None
    try:
        group = derive_group(info, frame)
        rule = WinnerRule.from_info(info, group)
        winner = decide_winner(frame, group, rule)
    except (ScalingLabError, KeyError, IndexError):
        return None
    cells = frame[frame["group"].astype(str) == group].dropna(subset=["param.alpha", "param.beta"])
    if len(cells[[c for c in ("param.alpha", "param.beta", "param.gamma") if c in cells.columns]].drop_duplicates()) < 2:
        return None  # one cell is no grid (e.g. a phi sweep)
    ranking = rank_configurations(frame, group, rule)
    eligible = ranking[ranking["eligible"] & (ranking["config_id"] != winner.config_id)]
    return winner.config_id, [str(c) for c in eligible["config_id"].head(RUNNERS_UP)]


def _grid(info: Mapping[str, Any], frame: pd.DataFrame) -> Family:
    found = grid_runners_up(info, frame)
    return Family(GRID, () if found is None else tuple((runner, found[0]) for runner in found[1]))


def comparison_families(info: Mapping[str, Any], frame: pd.DataFrame) -> dict[str, Family]:
    """Every family of comparisons the report makes, by name (families without pairs left out)."""
    if frame.empty:
        return {}
    configs = configurations(frame)
    families = [_feature_networks(configs), _fusion(configs), _scaling(configs), _grid(info, frame)]
    return {f.name: f for f in families if f.pairs or f.excluded}
