"""The numbers behind each report section, as DataFrames: seed means, fronts, ablations, grids."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from scaling_lab import paper, stats
from scaling_lab.errors import ScalingLabError
from scaling_lab.pareto import pareto_front
from scaling_lab.report.run import Run
from scaling_lab.schema import ACCURACY_METRICS, PLOTTED_COSTS, flatten_spec, interval_columns, read_curve
from scaling_lab.study import families
from scaling_lab.study.winner import WinnerRule, decide_winner, derive_group, rank_configurations

GRID_PARAMS = ("param.alpha", "param.beta", "param.gamma")
NON_SCALING_GROUPS = families.NON_SCALING_GROUPS
# the fields compound scaling changes (scaling_lab.scaling.scale_detector / scale_backbone)
SCALED_FIELDS = ("backbone.width", "backbone.depth", "backbone.resolution", "resolution", "channels", "feature_repeats", "head_repeats")


def measured(run: Run) -> list[str]:
    """Accuracy metrics and costs the study recorded for at least one complete trial."""
    columns = [*ACCURACY_METRICS, *PLOTTED_COSTS, "flops_ratio"]
    return [c for c in columns if c in run.trials.columns and run.complete[c].notna().any()]


def configurations(run: Run) -> pd.DataFrame:
    """One row per configuration of complete trials: mean and standard deviation over seeds.

    Columns: every measured metric/cost (mean) and ``<name>_std``, ``n_seeds``, ``seeds``,
    ``trial_ids``, ``group``, ``summary`` (what differs from the base spec), the spec and
    ``param.*`` values, ``on_front`` (non-dominated under the study's objectives), the main
    metric's 95 % interval ``<metric>_ci_low``/``_ci_high`` (over seeds; for one seed, over the
    pooled seed noise or else the trial's bootstrap over images; ``interval`` says which; AP
    intervals clipped to [0, 1]) and ``possibly_on_front`` (on the front when
    the main metric is at its interval's upper end).
    """
    complete = run.complete
    if complete.empty:
        return pd.DataFrame()
    values = measured(run)
    grouped = complete.groupby(["group", "config_id"], sort=False)
    table = grouped[values].mean()
    table = table.join(grouped[values].std(ddof=1).add_suffix("_std"))
    table["n_seeds"] = grouped.size()
    table["seeds"] = grouped["seed"].agg(_joined) if "seed" in complete.columns else ""
    table["trial_ids"] = grouped["trial_id"].agg(_joined)
    table = table.join(grouped[[*run.spec_columns, *run.param_columns]].first()).reset_index()
    table["summary"] = table["config_id"].map(spec_summaries(run)).fillna("")
    planned = len(run.study.get("seeds") or []) or None
    table["planned_seeds"] = planned if planned else table["n_seeds"]
    table["incomplete"] = table["n_seeds"] < table["planned_seeds"]
    pooled = stats.pooled_seed_noise(complete, run.main_metric)
    intervals = [_interval(run, trials, pooled) for _, trials in grouped]
    metric = run.main_metric
    low, high = interval_columns(metric)
    table[low] = [found.low for found in intervals]
    table[high] = [found.high for found in intervals]
    table["interval"] = [found.source for found in intervals]
    matrix, directions = _objective_matrix(run, table)
    # A configuration short of its planned seeds is shown, flagged, but never on the front.
    competing = ~table["incomplete"].to_numpy()
    table["on_front"] = pareto_front(matrix, directions) & competing
    table["possibly_on_front"] = reaches_front(matrix, directions, _main_column(run, table), table[high].to_numpy(dtype=float)) & competing
    return table.iloc[_study_order(run, table["group"], grouped["trial_id"].min().to_numpy())].reset_index(drop=True)


def _study_order(run: Run, groups: pd.Series, first_trials: np.ndarray) -> np.ndarray:
    """Rows in the study file's group order, each group's in the order its trials ran (a study
    plans independent groups ahead, so a later group's trials may run first)."""
    position = {group.get("name"): index for index, group in enumerate(run.study.get("groups") or [])}
    return np.lexsort((first_trials, groups.map(lambda name: position.get(name, len(position))).to_numpy()))


def _interval(run: Run, trials: pd.DataFrame, pooled: stats.SeedNoise | None) -> stats.Estimate:
    metric = run.main_metric
    return stats.estimate(stats.seed_values(trials, metric).to_numpy(), stats.bootstrap_bounds(trials, metric), pooled, stats.bounds_of(metric))


def _main_column(run: Run, table: pd.DataFrame) -> int:
    objectives = [o["metric"] for o in run.study.get("objectives") or [] if o["metric"] in table.columns]
    return objectives.index(run.main_metric) if run.main_metric in objectives else 0


def reaches_front(matrix: np.ndarray, directions: list[str], column: int, optimistic: np.ndarray) -> np.ndarray:
    """Which points would be non-dominated with ``column`` at its ``optimistic`` value (the
    others at their means): those whose interval reaches the front. A point on the front
    reaches it; a point without an interval only if it is on the front."""
    result = pareto_front(matrix, directions)
    for index in np.flatnonzero(~result):
        if np.isfinite(optimistic[index]):
            moved = matrix.copy()
            moved[index, column] = optimistic[index]
            result[index] = pareto_front(moved, directions)[index]
    return result


def spec_summaries(run: Run) -> pd.Series:
    """A short label per configuration: the spec fields that differ from the study's base spec,
    then the search parameters that vary and are not spec fields themselves (alpha, phi, ...).

    Without a recorded base spec, the spec fields that vary in the study. A ``backbone.*`` field
    is named without its prefix where no plain field has the same name.
    """
    plain = [c for c in run.spec_columns if not c.startswith("backbone.")]
    spec_columns = [*plain, *(c for c in run.spec_columns if c not in plain)]
    names = {c.removeprefix("backbone.") for c in spec_columns}
    params = [c for c in run.param_columns if c.removeprefix("param.") not in names]
    firsts = run.trials.groupby("config_id", sort=False)[[*spec_columns, *params]].first()
    base = _flat_base(run)

    def differs(column: str) -> pd.Series:
        values = firsts[column].map(_short)
        if column in base:
            return values != _short(base[column])
        return pd.Series(values.nunique() > 1, index=firsts.index)

    shown, seen = [], set()
    for column in [*spec_columns, *params]:
        values = tuple(firsts[column].astype(str))
        if differs(column).any() and values not in seen:
            shown.append(column)
            seen.add(values)
    labels = {c: c.removeprefix("param.").removeprefix("backbone.") if c.removeprefix("backbone.") not in plain else c for c in shown}
    masks = {c: differs(c) for c in shown}

    def summary(row: pd.Series) -> str:
        parts = [f"{labels[c]}={_short(row[c])}" for c in shown if pd.notna(row[c]) and (c in params or masks[c][row.name])]
        return ", ".join(parts) or "base spec"

    return firsts.apply(summary, axis=1)


def _flat_base(run: Run) -> dict[str, Any]:
    """The study's base spec as results columns (``backbone.width``, lists as JSON), if recorded."""
    base = run.study.get("base_spec")
    return flatten_spec(base) if isinstance(base, dict) else {}


def _objective_matrix(run: Run, table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    objectives = [o for o in run.study.get("objectives") or [] if o["metric"] in table.columns]
    if not objectives:
        objectives = [{"metric": run.main_metric, "direction": "maximize"}]
    matrix = table[[o["metric"] for o in objectives]].to_numpy(dtype=float)
    return matrix, [o.get("direction", "maximize") for o in objectives]


def front_on(table: pd.DataFrame, metric: str, cost: str) -> np.ndarray:
    """The 2-D front of mean ``metric`` (maximized) against mean ``cost`` (minimized)."""
    return pareto_front(table[[metric, cost]].to_numpy(dtype=float), ["maximize", "minimize"])


def state_counts(run: Run) -> dict[str, int]:
    counts = run.trials["state"].value_counts()
    return {state: int(counts[state]) for state in counts.index}


def best_trials(run: Run, count: int = 5) -> pd.DataFrame:
    """The complete trials with the highest main metric that recorded a training curve, with
    their configuration's ``summary``."""
    if "curve" not in run.trials.columns or run.complete.empty:  # an empty mask would select columns, not rows
        return run.complete.iloc[0:0]
    with_curve = run.complete[run.complete["curve"].map(lambda text: bool(read_curve(text)))]
    best = with_curve.sort_values(run.main_metric, ascending=False).head(count)
    return best.assign(summary=best["config_id"].map(spec_summaries(run)))


def ablation_table(run: Run, configs: pd.DataFrame) -> pd.DataFrame:
    """EfficientDet Table 5 in our data: one row per feature network and fusion rule.

    Params and FLOPs are ratios to the repeated top-down FPN (``feature_network == 'fpn'``);
    without an FPN configuration the ratio columns are NaN.
    """
    rows = families.ablation_rows(configs).copy()
    if rows.empty:
        return pd.DataFrame()
    if "fusion" not in rows.columns:
        rows["fusion"] = ""
    baseline = rows[rows["feature_network"] == paper.FEATURE_NETWORK_BASELINE]
    for cost in ("params", "flops"):
        if cost in rows.columns:
            reference = baseline[cost].iloc[0] if not baseline.empty else math.nan
            rows[f"{cost}_ratio"] = rows[cost] / reference
    rows["paper_name"] = [
        getattr(paper.feature_network_row(network, fusion), "name", "")
        for network, fusion in zip(rows["feature_network"], rows["fusion"])
    ]
    order = {row.name: index for index, row in enumerate(paper.FEATURE_NETWORKS)}
    rows["_order"] = rows["paper_name"].map(order).fillna(len(order))
    return rows.sort_values(["_order", "feature_network", "fusion"]).drop(columns="_order").reset_index(drop=True)


def fusion_pairs(run: Run, configs: pd.DataFrame) -> pd.DataFrame:
    """EfficientDet Table 6 in our data: configurations that differ only by softmax vs fast fusion."""
    pairs = families.fusion_pairs(configs, "softmax")
    if pairs.empty:
        return pairs
    metric = run.main_metric
    table = pd.DataFrame(
        {
            "configuration": pairs["summary_fast"].str.replace(r"fusion=fast(, )?", "", regex=True),
            f"{metric}_softmax": pairs[f"{metric}_softmax"],
            f"{metric}_fast": pairs[f"{metric}_fast"],
            "config_id_softmax": pairs["config_id_softmax"],
            "config_id_fast": pairs["config_id_fast"],
        }
    )
    if "latency_ms" in configs.columns:
        table["latency_ms_softmax"] = pairs["latency_ms_softmax"]
        table["latency_ms_fast"] = pairs["latency_ms_fast"]
        table["speedup"] = pairs["latency_ms_softmax"] / pairs["latency_ms_fast"]
    return table


def compound_grid(run: Run, configs: pd.DataFrame) -> pd.DataFrame:
    """The derive group's alpha/beta/gamma cells with their measured FLOPs ratio and whether each
    may win under the study's winner rule (``eligible``: all seeds complete, within the group's
    constraints; see ``scaling_lab.study.winner``)."""
    if configs.empty or not all(p in configs.columns for p in GRID_PARAMS):
        return pd.DataFrame()
    try:
        group = derive_group(run.study, run.trials)
    except ScalingLabError:
        return pd.DataFrame()
    grid = configs[configs["group"] == group].dropna(subset=list(GRID_PARAMS)).copy()
    if len(grid.drop_duplicates(subset=list(GRID_PARAMS))) < 2:  # one cell is no grid (e.g. a phi sweep)
        return pd.DataFrame()
    phi = grid["param.phi"].fillna(1.0) if "param.phi" in grid.columns else pd.Series(1.0, index=grid.index)
    nominal = (grid["param.alpha"] * grid["param.beta"] ** 2 * grid["param.gamma"] ** 2) ** phi
    measured_ratio = grid["flops_ratio"] if "flops_ratio" in grid.columns else pd.Series(math.nan, index=grid.index)
    grid["grid_flops_ratio"] = measured_ratio.fillna(nominal)
    ranking = rank_configurations(run.trials, group, WinnerRule.from_info(run.study, group))
    eligible = ranking.set_index("config_id")["eligible"] if not ranking.empty else pd.Series(dtype=bool)
    grid["eligible"] = grid["config_id"].map(eligible).fillna(False).astype(bool)
    return grid.reset_index(drop=True)


def derived_coefficients(run: Run, grid: pd.DataFrame) -> pd.Series | None:
    """The grid's winning cell by the study's winner rule (the one ``derive`` and the runner
    use), or None when no cell may win."""
    if grid.empty:
        return None
    group = str(grid["group"].iloc[0])
    try:
        winner = decide_winner(run.trials, group, WinnerRule.from_info(run.study, group))
    except ScalingLabError:
        return None
    return grid[grid["config_id"] == winner.config_id].iloc[0]


def grid_constraint(run: Run, group: str) -> str:
    """The group's constraints as text, e.g. ``flops 1.5 to 2.5 x the base``."""
    info = next((g for g in run.study.get("groups") or [] if g.get("name") == group), {})
    parts = []
    for c in info.get("constraints") or []:
        low = "-" if c.get("min") is None else f"{c['min']:g}"
        high = "-" if c.get("max") is None else f"{c['max']:g}"
        parts.append(f"{c['cost']} {low} to {high}{' x the base' if c.get('relative') else ''}")
    return "; ".join(parts) or "none"


def scaling_groups(run: Run, configs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Scaling curves: each ``group`` other than grid/ablation with phi, by FLOPs, starting at the
    unscaled base (phi = 0) where the study has it; a curve needs two phi values."""
    if configs.empty or "flops" not in configs.columns or "param.phi" not in configs.columns:
        return {}
    curves = {}
    for group, rows in configs.groupby("group", sort=True):
        rows = rows.dropna(subset=["flops"])
        if group in NON_SCALING_GROUPS or rows["param.phi"].dropna().empty:
            continue
        if not (rows["param.phi"] == 0).any():
            start = unscaled_start(run, configs, rows)
            rows = rows if start is None else pd.concat([start.to_frame().T.assign(**{"param.phi": 0.0}), rows])
        if rows["param.phi"].nunique() >= 2:
            curves[str(group)] = rows.sort_values("flops")
    return curves


def unscaled_start(run: Run, configs: pd.DataFrame, curve: pd.DataFrame) -> pd.Series | None:
    """The configuration a scaling curve starts from: the base spec's values in the fields where
    the curve departs from the base, the curve's own values in every other spec field (e.g. the BiFPN of a
    feature-network group for a BiFPN phi sweep)."""
    base = _flat_base(run)
    columns = [c for c in run.spec_columns if c in configs.columns and c in curve.columns]
    scaled = [c for c in columns if c in SCALED_FIELDS and c in base and (curve[c].map(_short) != _short(base[c])).any()]
    if not scaled:
        return None
    fixed = [c for c in columns if c not in scaled]
    matches = pd.Series(True, index=configs.index)
    for column in scaled:
        matches &= configs[column].map(_short) == _short(base[column])
    for column in fixed:
        matches &= configs[column].map(_short) == _short(curve[column].iloc[0])
    found = configs[matches].dropna(subset=["flops"])
    return None if found.empty else found.iloc[0]


def scaling_gains(run: Run, curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per scaling group, its largest model against the smallest model of all groups (the shared baseline)."""
    metric = run.main_metric
    baseline = min((rows.iloc[0] for rows in curves.values()), key=lambda row: row["flops"])
    return pd.DataFrame(
        [
            {
                "group": group,
                "summary": rows.iloc[-1]["summary"],
                "flops_ratio": rows.iloc[-1]["flops"] / baseline["flops"],
                "gain": rows.iloc[-1][metric] - baseline[metric],
            }
            for group, rows in curves.items()
        ]
    )


def _joined(values: pd.Series) -> str:
    return ", ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
