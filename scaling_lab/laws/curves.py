"""Scaling curves: each scaling rule's metric against measured FLOPs, fitted with the forms of
``laws.forms`` and the one with the smallest leave-one-out error kept (fewer parameters on a
tie); seed-resampled refits give the exponent's interval and the curve's band, and a prediction
at a FLOPs target adds one new trial's seed noise to the band (a prediction interval). A target
outside the measured FLOPs is marked as extrapolation.

A rule is a group whose configurations vary ``phi`` (compound, width-, depth- or resolution-only,
fast compound). Its unscaled start (phi = 0) is whichever configuration of the study has the
spec the rule gives at phi = 0, in any group. Other groups contribute their Pareto set (the
configurations no cheaper one beats) as a curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from scaling_lab import stats
from scaling_lab.errors import ScalingLabError
from scaling_lab.pareto import pareto_front
from scaling_lab.laws.cells import REPLICATES, Cell, interval, main_metric, resampled_means, seed_df, table_cells, trial_noise_sd
from scaling_lab.laws.forms import FORMS, Form, leave_one_out_rmse
from scaling_lab.spec import spec_from_dict
from scaling_lab.study.search_space import SearchSpace
from scaling_lab.study.winner import derive_group

MIN_POINTS = 3
PARETO_PREFIX = "pareto:"


@dataclass(frozen=True)
class Prediction:
    flops: float
    value: float
    low: float  # 95 % prediction interval of one new trial
    high: float
    extrapolated: bool
    beyond: float  # target / nearest measured FLOPs end (1 inside the range)


@dataclass(frozen=True)
class CurveFit:
    rule: str
    metric: str
    cells: tuple[Cell, ...]
    flops: np.ndarray
    means: np.ndarray
    reference_flops: float
    form: Form
    params: np.ndarray
    loo_rmse: dict[str, float]  # every form tried
    exponent: float
    exponent_interval: tuple[float, float]
    replicate_params: np.ndarray
    noise_sd: float  # seed-to-seed sd of one trial
    activation_exponent: float  # activations ∝ FLOPs^k over the rule's configurations (NaN unmeasured)

    @property
    def measured_range(self) -> tuple[float, float]:
        return float(self.flops.min()), float(self.flops.max())

    def _x(self, flops: np.ndarray | float) -> np.ndarray:
        return np.log(np.atleast_1d(np.asarray(flops, dtype=float)) / self.reference_flops)

    def predict(self, flops: np.ndarray | float) -> np.ndarray:
        """The fitted curve at ``flops``, within the metric's range (a log-linear form has none)."""
        bounds = stats.bounds_of(self.metric)
        predicted = self.form.predict(self.params, self._x(flops))
        return np.clip(predicted, *bounds) if bounds else predicted

    def band(self, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 95 % band of the fitted curve over seed-resampled refits (within the metric's range)."""
        low, high = interval(self.form.predict(self.replicate_params, self._x(flops)), seed_df(self.cells), axis=0)
        bounds = stats.bounds_of(self.metric)
        return (np.clip(low, *bounds), np.clip(high, *bounds)) if bounds else (low, high)

    def prediction(self, flops: float, seed: int = 0) -> Prediction:
        """The metric one new trial at ``flops`` is predicted to reach, with a 95 % interval."""
        value = float(self.predict(flops)[0])
        curves = self.form.predict(self.replicate_params, self._x(flops))[:, 0]
        noise = np.random.default_rng(seed).normal(0.0, self.noise_sd if math.isfinite(self.noise_sd) else 0.0, size=curves.shape)
        low, high = stats.clipped(*interval(curves + noise, seed_df(self.cells)), stats.bounds_of(self.metric))
        smallest, largest = self.measured_range
        beyond = flops / largest if flops > largest else smallest / flops if flops < smallest else 1.0
        return Prediction(float(flops), value, float(low), float(high), beyond > 1.0 + 1e-9, float(beyond))

    def summary(self) -> str:
        low, high = self.exponent_interval
        return f"{self.form.name}: {self.form.rate} = {self.exponent:.3g} [95 % {low:.3g}, {high:.3g}], leave-one-out rmse {self.loo_rmse[self.form.name]:.3g}"


def fit_curve(rule: str, metric: str, cells: Sequence[Cell], forms: Sequence[str] | None = None, replicates: int = REPLICATES, seed: int = 0) -> CurveFit:
    """Fit the metric of ``cells`` (main metric in column 0, with measured FLOPs) against FLOPs."""
    if len(cells) < MIN_POINTS:
        raise ScalingLabError(f"too few points for a scaling curve of {rule!r}: {len(cells)} configuration(s) with complete trials and measured FLOPs; at least {MIN_POINTS} are needed")
    flops = np.array([cell.costs.get("flops", math.nan) for cell in cells])
    if not np.all(np.isfinite(flops)) or np.any(flops <= 0):
        raise ScalingLabError(f"scaling curve of {rule!r}: every configuration needs measured FLOPs (column flops); some have none")
    if len(np.unique(flops)) < MIN_POINTS:
        raise ScalingLabError(f"too few points for a scaling curve of {rule!r}: only {len(np.unique(flops))} distinct FLOPs values")
    means = np.array([cell.mean[0] for cell in cells])
    reference = float(np.exp(np.log(flops).mean()))
    x = np.log(flops / reference)
    accuracy = bool(np.all((means >= 0) & (means < 1)))
    candidates = [FORMS[name] for name in (forms or FORMS)]
    if forms and not accuracy and any(f.needs_accuracy for f in candidates):
        raise ScalingLabError(f"scaling curve of {rule!r}: the {metric} means are not all in [0, 1), so the power forms (error = 1 - {metric}) do not apply; use log-linear")
    candidates = [f for f in candidates if accuracy or not f.needs_accuracy]
    loo = {form.name: leave_one_out_rmse(form, x, means) for form in candidates}
    fitted = [f for f in candidates if math.isfinite(loo[f.name])]
    if not fitted:
        raise ScalingLabError(f"too few points for a scaling curve of {rule!r}: {len(cells)} configuration(s) leave too few to fit any form when one is held out")
    form = min(fitted, key=lambda f: (round(loo[f.name], 12), f.parameters))
    params = form.fit(x, means)
    drawn = resampled_means(cells, replicates, np.random.default_rng(seed))[:, :, 0]
    replicate_params = form.fit_many(x, drawn)
    exponents = form.exponent(replicate_params)
    bounds = interval(exponents, seed_df(cells)) if np.isfinite(exponents).any() else (math.nan, math.nan)
    activations = np.array([cell.costs.get("activations", math.nan) for cell in cells])
    activation_exponent = float(np.polyfit(np.log(flops), np.log(activations), 1)[0]) if np.all(np.isfinite(activations) & (activations > 0)) else math.nan
    return CurveFit(
        rule, metric, tuple(cells), flops, means, reference, form, params, loo, float(form.exponent(params)), bounds,  # type: ignore[arg-type]
        replicate_params, trial_noise_sd(cells), activation_exponent,
    )


def rule_cells(info: Mapping[str, Any], frame: pd.DataFrame, where: str) -> dict[str, list[Cell]]:
    """Each scaling rule's configurations (with its phi = 0 start from any group) and each other
    group's Pareto set, keyed by group name (``pareto:<group>`` for Pareto sets)."""
    metric, maximize = main_metric(info, frame, where)
    every = table_cells(frame, [metric], where)
    by_group: dict[str, list[Cell]] = {}
    for cell in every:
        by_group.setdefault(cell.group, []).append(cell)
    try:
        grid = derive_group(info, frame)  # a coefficient grid at one phi belongs to the response surface, not to a rule
    except ScalingLabError:
        grid = None
    rules: dict[str, list[Cell]] = {}
    for group, cells in sorted(by_group.items()):
        phis = {cell.params.get("phi") for cell in cells if cell.params.get("phi") is not None}
        if group == grid and len(phis) <= 1:
            continue
        if phis:
            rules[group] = [*([] if 0 in phis else _start(info, cells, every)), *cells]
        elif len(cells) >= MIN_POINTS:
            front = pareto_set(cells, maximize)
            if len(front) >= MIN_POINTS:
                rules[PARETO_PREFIX + group] = front
    return rules


def _start(info: Mapping[str, Any], cells: Sequence[Cell], every: Sequence[Cell]) -> list[Cell]:
    """The study's configuration with the spec the rule gives at phi = 0 (first found), if any."""
    base = info.get("base_spec")
    if not isinstance(base, Mapping):
        return []
    try:
        spec = SearchSpace(parameters=()).build_spec(spec_from_dict(dict(base)), {**cells[0].params, "phi": 0})
    except (ScalingLabError, TypeError, ValueError):
        return []
    own = {cell.key for cell in cells}
    return [cell for cell in every if cell.spec_hash == spec.spec_hash and cell.key not in own][:1]


def pareto_set(cells: Sequence[Cell], maximize: bool = True) -> list[Cell]:
    """The configurations on the front of the main metric against FLOPs (``pareto_front``), by FLOPs."""
    measured = [c for c in cells if math.isfinite(c.costs.get("flops", math.nan))]
    values = [(c.mean[0], c.costs["flops"]) for c in measured]
    on_front = pareto_front(values, ["maximize" if maximize else "minimize", "minimize"]) if measured else []
    return sorted((c for c, on in zip(measured, on_front) if on), key=lambda c: c.costs["flops"])


def fit_rules(info: Mapping[str, Any], frame: pd.DataFrame, where: str, replicates: int = REPLICATES) -> tuple[dict[str, CurveFit], dict[str, str]]:
    """Every rule's curve, and for each rule that could not be fitted, why."""
    metric, _ = main_metric(info, frame, where)
    fits, skipped = {}, {}
    for rule, cells in rule_cells(info, frame, where).items():
        try:
            fits[rule] = fit_curve(rule, metric, cells, replicates=replicates)
        except ScalingLabError as exc:
            skipped[rule] = str(exc)
    return fits, skipped
