"""Like with like: scaling rules compared at the same measured FLOPs.

EfficientNet compares compound scaling with width-, depth- and resolution-only scaling at the
same FLOPs (2^phi x the base). Channel, repeat and resolution rounding move a spec's measured
FLOPs away from the nominal alpha·beta²·gamma² (at phi = 1 of ``compound_grid --profile cpu``,
beta = sqrt 2 measures 1.41x, not 2x). ``solve_coefficient`` finds the coefficient whose specs,
counted with fvcore, land closest to the targets at every phi; ``group_flops_ratios`` measures
what a study's groups really give, for a test or a reader to check. The base must carry the
data's ``num_classes`` (``runner.with_data_classes``), as the runner measures: the class head's
last convolution is a large share of a small detector's FLOPs and does not scale with depth.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from scaling_lab.measure import measure
from scaling_lab.spec import Spec
from scaling_lab.study.search_space import InfeasibleCandidate, SearchSpace

TARGET_BASE = 2.0  # FLOPs x2 per phi step, as in EfficientNet
_SCALING = SearchSpace(parameters=(), source="flops matching")


def flops_ratio(base: Spec, values: Mapping[str, float]) -> float:
    """Measured FLOPs of the base scaled by ``values`` (alpha, beta, gamma, phi) over the base's."""
    return measure(_SCALING.build_spec(base, values)).flops / measure(base).flops


def solve_coefficient(
    base: Spec,
    name: str,
    phis: Iterable[float],
    fixed: Mapping[str, float] | None = None,
    target_base: float = TARGET_BASE,
    low: float = 1.0,
    high: float = 4.0,
    steps: int = 200,
) -> tuple[float, dict[float, float]]:
    """The value of coefficient ``name`` that minimizes the worst relative miss of
    ``target_base^phi`` over ``phis``, searched on a log grid in [low, high]; returns it with the
    measured ratio at each phi. ``name`` is alpha, beta or gamma, or ``phi`` for the compound
    phi step: ``fixed`` coefficients at phi x step. Rounding makes the measured FLOPs a step
    function, so a grid search, not bisection."""
    phis = tuple(phis)
    fixed = dict(fixed or {})
    best, best_miss, best_ratios = low, np.inf, {}
    for value in np.round(np.geomspace(low, high, steps), 4):
        try:
            ratios = {
                phi: flops_ratio(base, {**fixed, "phi": phi * float(value)} if name == "phi" else {**fixed, name: float(value), "phi": phi})
                for phi in phis
            }
        except InfeasibleCandidate:
            continue
        miss = max(abs(ratio / target_base**phi - 1) for phi, ratio in ratios.items())
        if miss < best_miss - 1e-9:
            best, best_miss, best_ratios = float(value), miss, ratios
    return best, best_ratios


def group_flops_ratios(base: Spec, space: SearchSpace) -> list[dict[str, float]]:
    """Every grid point of a group's search space (``best`` references must be resolved) with its
    measured FLOPs ratio to the base and the 2^phi target."""
    rows = []
    for values in space.grid():
        ratio = measure(space.build_spec(base, values)).flops / measure(base).flops
        phi = float(values.get("phi", 0.0))
        rows.append({**values, "flops_ratio": ratio, "target": TARGET_BASE**phi})
    return rows
