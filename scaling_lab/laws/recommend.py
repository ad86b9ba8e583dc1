"""A budgeted recommendation: the spec the fits predict best within a FLOPs, parameter or latency
budget.

Candidates are each scaling rule's largest spec within the budget (phi found by bisection on
the rule's measured cost: fvcore FLOPs or parameters of the built spec; latency from a log-log
fit of the rule's measured latencies against FLOPs), predicted by the rule's curve
(``laws.curves``) with a prediction interval, and every measured configuration within the
budget, with its seed mean and 95 % interval. The best predicted one wins; a prediction beyond
the rule's measured FLOPs is flagged as extrapolation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import yaml

from scaling_lab import stats
from scaling_lab.errors import ScalingLabError
from scaling_lab.files import atomic_write_text
from scaling_lab.laws.cells import REPLICATES, Z_95, Cell, main_metric, spec_of, table_cells
from scaling_lab.laws.curves import PARETO_PREFIX, CurveFit, fit_rules
from scaling_lab.spec import Spec, spec_from_dict
from scaling_lab.study.search_space import InfeasibleCandidate, SearchSpace

BUDGET_COSTS = {"flops": "flops", "params": "params", "latency": "latency_ms"}
SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}
LATENCY_UNITS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3}
PHI_RANGE = (-2.0, 12.0)
BISECTIONS = 5  # phi to within 1/32 of a step (rounding makes finer steps mostly the same spec)


def parse_budget(kind: str, text: str) -> float:
    """``10G`` / ``2.5e9`` FLOPs, ``5M`` parameters, ``20ms`` / ``0.02s`` latency (a bare number is ms)."""
    units = LATENCY_UNITS if kind == "latency" else SI
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not found or found.group(2) not in units or float(found.group(1)) <= 0:
        examples = "20ms, 0.02s or 20 (milliseconds)" if kind == "latency" else "10G, 400M, 2.5e9 (suffixes K, M, G or B, T)"
        raise ScalingLabError(f"--{kind} {text!r} is not a budget; give a positive number such as {examples}")
    return float(found.group(1)) * units[found.group(2)]


@dataclass(frozen=True)
class Candidate:
    source: str  # "rule compound, phi 2.31" or "measured configuration <id> (group g)"
    spec: Spec
    cost: float  # in the budget's unit (FLOPs, parameters, ms)
    flops: float
    value: float
    low: float
    high: float
    extrapolated: bool = False
    beyond: float = 1.0
    evidence: str = ""
    trials: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Recommendation:
    kind: str
    budget: float
    metric: str
    best: Candidate
    candidates: tuple[Candidate, ...]
    skipped: Mapping[str, str]

    def headline(self) -> list[str]:
        """What is recommended, its prediction, its evidence and any extrapolation warning."""
        best = self.best
        lines = [
            f"best predicted within {self.kind} <= {_human(self.budget, self.kind)}: {best.source}",
            f"  predicted {self.metric} {best.value:.4g} [95 % {best.low:.4g}, {best.high:.4g}] at {_human(best.cost, self.kind)} {self.kind}"
            + (f" ({_human(best.flops, 'flops')} FLOPs)" if self.kind != "flops" else ""),
            f"  evidence: {best.evidence}",
        ]
        if best.trials:
            lines.append(f"  trials: {', '.join(map(str, best.trials))}")
        if best.extrapolated:
            lines.append(f"  WARNING: extrapolation: {best.beyond:.3g}x beyond the FLOPs this rule measured; train it to check")
        return lines

    def to_text(self) -> str:
        lines = [*self.headline(), "candidates (best first):"]
        for candidate in self.candidates:
            mark = f" (extrapolated x{candidate.beyond:.3g})" if candidate.extrapolated else ""
            lines.append(f"  {candidate.value:.4g} [{candidate.low:.4g}, {candidate.high:.4g}]  {_human(candidate.cost, self.kind)}  {candidate.source}{mark}")
        for rule, reason in self.skipped.items():
            lines.append(f"  not a candidate: {rule}: {reason}")
        return "\n".join(lines)


def _human(value: float, kind: str) -> str:
    if kind == "latency":
        return f"{value:.3g} ms"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


def recommend(info: Mapping[str, Any], frame: pd.DataFrame, where: str, kind: str, budget: float, replicates: int = REPLICATES) -> Recommendation:
    """The candidate predicted best within ``budget`` of ``kind`` (flops, params or latency)."""
    if kind not in BUDGET_COSTS:
        raise ScalingLabError(f"budget kind {kind!r} is not valid; valid kinds are {', '.join(BUDGET_COSTS)}")
    metric, maximize = main_metric(info, frame, where)
    cost_column = BUDGET_COSTS[kind]
    if cost_column not in frame.columns or frame[cost_column].isna().all():
        hint = "run a study that measures latency (a latency_ms objective or measure_latency: true)" if kind == "latency" else "the study recorded no costs"
        raise ScalingLabError(f"{where}: the results table has no {cost_column} values, needed for a {kind} budget; {hint}")
    base = info.get("base_spec")
    if not isinstance(base, Mapping):
        raise ScalingLabError(f"{where}: study.json has no base_spec; recommending a spec needs the study's base spec")
    base_spec = spec_from_dict(dict(base), f"{where}: base_spec")
    fits, skipped = fit_rules(info, frame, where, replicates)
    skipped = dict(skipped)
    measured = [cell for cell in table_cells(frame, [metric], where) if cell.spec and cell.costs.get(cost_column, math.inf) <= budget]
    candidates = [_measured(cell, cost_column, metric) for cell in measured]
    for rule, fit in fits.items():
        if rule.startswith(PARETO_PREFIX):
            continue
        try:
            candidates.append(_from_rule(rule, fit, base_spec, kind, budget))
        except ScalingLabError as exc:
            skipped[rule] = str(exc)
    if not candidates:
        raise ScalingLabError(f"{where}: no measured configuration and no scaling rule fits within {kind} <= {_human(budget, kind)}; raise the budget")
    ordered = sorted(candidates, key=lambda c: -c.value if maximize else c.value)
    return Recommendation(kind, budget, metric, ordered[0], tuple(ordered), skipped)


def _measured(cell: Cell, cost_column: str, metric: str) -> Candidate:
    image_se = cell.image_se or math.nan
    over_images = (cell.mean[0] - Z_95 * image_se, cell.mean[0] + Z_95 * image_se) if cell.image_se else None
    found = stats.estimate(cell.values[:, 0], over_images, bounds=stats.bounds_of(metric))
    return Candidate(
        source=f"measured configuration {cell.key} (group {cell.group})",
        spec=spec_from_dict(spec_of(cell), f"the recorded spec of configuration {cell.key}"),
        cost=cell.costs[cost_column],
        flops=cell.costs.get("flops", math.nan),
        value=float(cell.mean[0]),
        low=found.low,
        high=found.high,
        evidence=f"{cell.n_seeds} trained seed(s) of this configuration ({metric} mean and its 95 % interval)",
        trials=cell.trial_ids,
    )


def _from_rule(rule: str, fit: CurveFit, base: Spec, kind: str, budget: float) -> Candidate:
    own = [cell for cell in fit.cells if cell.group == rule]
    values = {k: v for k, v in own[0].params.items() if k != "phi"}
    space = SearchSpace(parameters=())

    def build(phi: float) -> Spec:
        return space.build_spec(base, {**values, "phi": phi})

    cost = _cost_function(kind, fit)
    phi = _largest_phi(lambda p: cost(build(p)), budget, kind, max(float(cell.params.get("phi", 0)) for cell in fit.cells))
    spec = build(phi)
    flops = _measure(spec)["flops"]
    predicted = fit.prediction(flops)
    return Candidate(
        source=f"rule {rule} at phi {phi:.3f}",
        spec=spec,
        cost=cost(spec),
        flops=flops,
        value=predicted.value,
        low=predicted.low,
        high=predicted.high,
        extrapolated=predicted.extrapolated,
        beyond=predicted.beyond,
        evidence=f"the {rule} curve fitted on {len(fit.cells)} configurations ({_human(fit.measured_range[0], 'flops')} to "
        f"{_human(fit.measured_range[1], 'flops')} FLOPs), {fit.summary()}; one trial's seed sd {fit.noise_sd:.3g}",
        trials=tuple(t for cell in fit.cells for t in cell.trial_ids),
    )


def _measure(spec: Spec) -> dict[str, float]:
    from scaling_lab.study.candidate import cost_counts

    return cost_counts(spec)


def _cost_function(kind: str, fit: CurveFit) -> Callable[[Spec], float]:
    if kind != "latency":
        return lambda spec: _measure(spec)[BUDGET_COSTS[kind]]
    latency = np.array([cell.costs.get("latency_ms", math.nan) for cell in fit.cells])
    known = np.isfinite(latency) & (latency > 0)
    if known.sum() < 2:
        raise ScalingLabError("fewer than two of its configurations have a measured latency, so its latency cannot be predicted")
    slope, intercept = np.polyfit(np.log(fit.flops[known]), np.log(latency[known]), 1)
    return lambda spec: float(math.exp(intercept + slope * math.log(_measure(spec)["flops"])))


def _largest_phi(cost: Callable[[float], float], budget: float, kind: str, measured: float) -> float:
    """The largest phi in ``PHI_RANGE`` whose spec costs at most ``budget``: bracketed by whole
    steps up from the largest measured phi (so no spec far beyond the budget is built), then
    bisected (cost grows with phi up to rounding)."""
    low, high = PHI_RANGE
    try:
        if cost(low) > budget:
            raise ScalingLabError(f"even phi {low:g} costs more than the {kind} budget")
        step = max(low, min(measured, high))
        while cost(step) <= budget:
            if step >= high:
                return high
            low, step = step, min(step + 1.0, high)
        high = step
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            low, high = (middle, high) if cost(middle) <= budget else (low, middle)
    except InfeasibleCandidate as exc:
        raise ScalingLabError(f"its spec cannot be built: {exc}") from None
    return low


def write_spec_file(recommendation: Recommendation, path: Path) -> Path:
    """The recommended spec as a YAML spec file (``train`` and a study's ``base:`` accept it),
    with the prediction and its evidence as comments."""
    best = recommendation.best
    header = [f"# scaling-lab recommend: {line}" for line in recommendation.headline()]
    atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(best.spec.to_dict(), sort_keys=False))
    return path
