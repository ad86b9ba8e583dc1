"""The compound grid as a response surface: the metric as a quadratic in log alpha and log beta,
maximized under the study's constraint alpha·beta²·gamma² = target.

On the constraint, log gamma = (log target - log alpha - 2 log beta) / 2, so a quadratic in log
depth, log width and log resolution multipliers is a quadratic in (log alpha, log beta): six
coefficients, fitted by least squares to the configurations' seed means. The optimum is sought
inside the grid (its alpha and beta range, gamma at least 1): a quadratic says nothing reliable
beyond the cells it was fitted on, so an optimum on that edge is flagged. Intervals come from
refitting on seed-resampled means (``cells.resampled_means``); the fit is called poor when its
residuals exceed the seed noise (a lack-of-fit test: F against the pooled seed variance, or
chi-square against the image-bootstrap variances when every cell has one seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, spatial
from scipy import stats as distributions

from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.cells import REPLICATES, Cell, interval, main_metric, mean_variances, resampled_means, seed_df, table_cells
from scaling_lab.study.winner import derive_group

TERMS = 6  # 1, x, y, x², xy, y² with x = ln alpha, y = ln beta
POOR_FIT_P = 0.05
REGION_LEVEL = 0.95


@dataclass(frozen=True)
class FitQuality:
    residual_sd: float  # root mean square of the cell means' residuals
    noise_sd: float  # root mean square of the seed noise of a cell mean
    statistic: float  # F (seed noise) or chi-square / df (image bootstrap); NaN when untestable
    df: tuple[float, float]
    p_value: float
    poor: bool | None  # None: cannot be judged (as many cells as coefficients, or no noise estimate)
    test: str

    def text(self) -> str:
        if self.poor is None:
            return f"fit not judged: {self.test}"
        verdict = "POOR: the residuals exceed the seed noise" if self.poor else "residuals within the seed noise"
        return (
            f"{verdict} (residual sd of the cell means {self.residual_sd:.3g} against their seed noise {self.noise_sd:.3g}; "
            f"{self.test} = {self.statistic:.2f}, p = {self.p_value:.3g})"
        )


@dataclass(frozen=True)
class SurfaceFit:
    group: str
    metric: str
    maximize: bool
    target: float
    cells: tuple[Cell, ...]
    points: np.ndarray  # (cells, 2): ln alpha, ln beta
    coefficients: np.ndarray
    optimum: dict[str, float]  # alpha, beta, gamma
    predicted: float  # the fitted metric at the optimum
    intervals: dict[str, tuple[float, float]]  # 95 % over seed-resampled refits (expanded percentiles) (alpha, beta, gamma, predicted)
    replicates: np.ndarray  # (replicates, 2): each refit's alpha, beta
    region: np.ndarray  # polygon in (alpha, beta) holding 95 % of the refits' optima
    on_edge: bool
    quality: FitQuality

    def beside(self, winner: Mapping[str, float], score: float) -> str:
        """The grid winner and the fitted optimum side by side; a poor fit reports no optimum."""
        lines = [f"response surface of group {self.group!r} ({len(self.cells)} configurations, quadratic in log alpha and log beta, alpha·beta²·gamma² = {self.target:g}):", f"  {self.quality.text()}"]
        if self.quality.poor:
            return "\n".join([*lines, "  fitted optimum not reported: the quadratic does not describe this grid; the grid winner stands alone"])
        lines.append(f"  {'':<18}{'grid winner':>12}   fitted optimum [95 % seed-bootstrap interval]")
        for name, dimension in (("alpha", "depth"), ("beta", "width"), ("gamma", "resolution")):
            low, high = self.intervals[name]
            lines.append(f"  {name + ' (' + dimension + ')':<18}{winner.get(name, math.nan):>12.4f}   {self.optimum[name]:.4f} [{low:.4f}, {high:.4f}]")
        low, high = self.intervals["predicted"]
        lines.append(f"  {self.metric + ' (mean)':<18}{score:>12.4g}   {self.predicted:.4g} predicted [{low:.4g}, {high:.4g}]")
        if self.on_edge:
            lines.append("  the fitted optimum lies on the edge of the grid (its alpha/beta range or gamma = 1): the best may lie outside; extend the grid there")
        return "\n".join(lines)

    def predict(self, alpha: np.ndarray | float, beta: np.ndarray | float) -> np.ndarray:
        return design(np.column_stack([np.log(np.ravel(alpha)), np.log(np.ravel(beta))])) @ self.coefficients


def design(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


def grid_cells(info: Mapping[str, Any], frame: pd.DataFrame, where: str) -> tuple[str, str, bool, list[Cell], float]:
    """The compound grid's configurations: (group, metric, maximize, cells, target), checked."""
    metric, maximize = main_metric(info, frame, where)
    group = derive_group(info, frame)
    cells = table_cells(frame, [metric], where, group)
    missing = [name for name in ("alpha", "beta", "gamma") if cells and any(name not in cell.params for cell in cells)]
    if missing:
        raise ScalingLabError(f"{where}: group {group!r} has configurations without param.{missing[0]}; the response surface needs alpha, beta and gamma in every cell")
    if len(cells) < TERMS:
        raise ScalingLabError(
            f"{where}: too few points for the response surface: group {group!r} has {len(cells)} configuration(s) with complete trials; "
            f"a quadratic in log alpha and log beta has {TERMS} coefficients, so it needs at least {TERMS} (more to judge the fit)"
        )
    phis = {cell.params.get("phi", 1) for cell in cells}
    if len(phis) > 1:
        raise ScalingLabError(f"{where}: group {group!r} mixes phi values {sorted(phis)}; the response surface fits one grid at one phi")
    products = np.array([cell.params["alpha"] * cell.params["beta"] ** 2 * cell.params["gamma"] ** 2 for cell in cells])
    target = float(np.median(products))
    if np.max(np.abs(products / target - 1)) > 1e-4:
        raise ScalingLabError(
            f"{where}: group {group!r}'s alpha·beta²·gamma² ranges from {products.min():.4g} to {products.max():.4g}; the fit solves "
            "under one constraint, so the grid must derive gamma from it (gamma: {type: derived, rule: compound_gamma})"
        )
    return group, metric, maximize, cells, target


def fit_surface(info: Mapping[str, Any], frame: pd.DataFrame, where: str, replicates: int = REPLICATES, seed: int = 0) -> SurfaceFit:
    """The response surface of the study's compound grid, its constrained optimum and intervals."""
    group, metric, maximize, cells, target = grid_cells(info, frame, where)
    points = np.log(np.array([[cell.params["alpha"], cell.params["beta"]] for cell in cells], dtype=float))
    matrix = design(points)
    rank = np.linalg.matrix_rank(matrix)
    if rank < TERMS:
        raise ScalingLabError(
            f"{where}: group {group!r}'s alpha and beta values determine only {rank} of the quadratic's {TERMS} coefficients; "
            "the grid needs at least three values of each of alpha and beta, not all on one line"
        )
    means = np.array([cell.mean[0] for cell in cells])
    pseudo_inverse = np.linalg.pinv(matrix)
    coefficients = pseudo_inverse @ means
    bounds = (points.min(axis=0), points.max(axis=0))
    optimum = constrained_optimum(coefficients, bounds, math.log(target), points, maximize)
    drawn = resampled_means(cells, replicates, np.random.default_rng(seed))[:, :, 0]
    refits = drawn @ pseudo_inverse.T
    optima = np.array([constrained_optimum(c, bounds, math.log(target), points, maximize) for c in refits])
    predicted = np.einsum("ij,ij->i", design(optima), refits)
    coefficient_values = {"alpha": np.exp(optima[:, 0]), "beta": np.exp(optima[:, 1])}
    coefficient_values["gamma"] = np.sqrt(target / (coefficient_values["alpha"] * coefficient_values["beta"] ** 2))
    intervals = {name: interval(values, seed_df(cells)) for name, values in {**coefficient_values, "predicted": predicted}.items()}
    alpha, beta = math.exp(optimum[0]), math.exp(optimum[1])
    return SurfaceFit(
        group=group,
        metric=metric,
        maximize=maximize,
        target=target,
        cells=tuple(cells),
        points=points,
        coefficients=coefficients,
        optimum={"alpha": alpha, "beta": beta, "gamma": math.sqrt(target / (alpha * beta**2))},
        predicted=float((design(optimum[None, :]) @ coefficients)[0]),
        intervals=intervals,
        replicates=np.column_stack([coefficient_values["alpha"], coefficient_values["beta"]]),
        region=confidence_region(np.column_stack([coefficient_values["alpha"], coefficient_values["beta"]])),
        on_edge=_on_edge(optimum, bounds, math.log(target)),
        quality=fit_quality(cells, means - matrix @ coefficients),
    )


def constrained_optimum(coefficients: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], log_target: float, starts: np.ndarray, maximize: bool = True) -> np.ndarray:
    """(ln alpha, ln beta) that maximizes (or minimizes) the quadratic inside the grid's box with
    gamma >= 1 (ln alpha + 2 ln beta <= ln target); SLSQP from the fitted best cells."""
    sign = -1.0 if maximize else 1.0

    c = coefficients

    def objective(point: np.ndarray) -> float:
        return sign * float((design(point[None, :]) @ c)[0])

    def gradient(point: np.ndarray) -> np.ndarray:
        x, y = point
        return sign * np.array([c[1] + 2 * c[3] * x + c[4] * y, c[2] + c[4] * x + 2 * c[5] * y])

    fitted = sign * (design(starts) @ coefficients)
    candidates = [starts[i] for i in np.argsort(fitted)[:3]] + [starts.mean(axis=0)]
    constraint = {"type": "ineq", "fun": lambda p: log_target - p[0] - 2 * p[1], "jac": lambda p: np.array([-1.0, -2.0])}
    box = list(zip(bounds[0], bounds[1]))
    best = min(
        (optimize.minimize(objective, start, jac=gradient, method="SLSQP", bounds=box, constraints=[constraint]) for start in candidates),
        key=lambda result: result.fun if result.success else math.inf,
    )
    return np.clip(best.x, bounds[0], bounds[1])


def _on_edge(point: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], log_target: float, tolerance: float = 1e-3) -> bool:
    at_box = np.any(np.abs(point - bounds[0]) < tolerance) or np.any(np.abs(point - bounds[1]) < tolerance)
    return bool(at_box or log_target - point[0] - 2 * point[1] < tolerance)


def confidence_region(optima: np.ndarray, level: float = REGION_LEVEL) -> np.ndarray:
    """The convex hull of the ``level`` share of bootstrap optima nearest their median (in
    Mahalanobis distance): a polygon in (alpha, beta), or the points themselves when they do
    not span an area (optima pinned to an edge or a corner of the grid)."""
    centre = np.median(optima, axis=0)
    spread = np.atleast_2d(np.cov(optima.T))
    distance = np.einsum("ij,jk,ik->i", optima - centre, np.linalg.pinv(spread), optima - centre)
    kept = np.unique(optima[distance <= np.quantile(distance, level)], axis=0)
    if len(kept) < 3:
        return kept
    try:
        hull = spatial.ConvexHull(kept)
    except spatial.QhullError:  # collinear optima: the segment's ends
        order = np.lexsort((kept[:, 1], kept[:, 0]))
        return kept[order[[0, -1]]]
    return kept[hull.vertices]


def fit_quality(cells: Sequence[Cell], residuals: np.ndarray) -> FitQuality:
    """Residuals against the seed noise of the cell means (lack-of-fit test)."""
    variances, noise_df = mean_variances(cells)
    residual_sd = float(np.sqrt(np.mean(residuals**2)))
    noise_sd = float(np.sqrt(np.mean(variances))) if np.all(np.isfinite(variances)) else math.nan
    lack_df = len(cells) - TERMS
    if lack_df <= 0:
        return FitQuality(residual_sd, noise_sd, math.nan, (lack_df, noise_df), math.nan, None, f"as many cells as the quadratic's {TERMS} coefficients (it passes through every mean)")
    if not np.all(np.isfinite(variances)) or np.any(variances <= 0):
        return FitQuality(residual_sd, noise_sd, math.nan, (lack_df, noise_df), math.nan, None, "no seed noise to judge it by (one seed per cell and no bootstrap interval)")
    scaled = float(np.sum(residuals**2 / variances))
    if math.isfinite(noise_df):
        statistic = scaled / lack_df
        p_value = float(distributions.f.sf(statistic, lack_df, noise_df))
        test = f"lack-of-fit F({lack_df}, {noise_df:g})"
    else:
        statistic = scaled / lack_df
        p_value = float(distributions.chi2.sf(scaled, lack_df))
        test = f"chi-square/df ({lack_df} df, image-bootstrap noise)"
    return FitQuality(residual_sd, noise_sd, statistic, (lack_df, noise_df), p_value, p_value < POOR_FIT_P, test)
