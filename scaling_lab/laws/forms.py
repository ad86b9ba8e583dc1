"""The curve forms a scaling rule is fitted with, metric y against x = ln(FLOPs / reference):

- ``power``: the error falls as a power of FLOPs, 1 - y = exp(a - b·x); exponent b;
- ``saturating``: the same towards an irreducible error, 1 - y = e_inf + exp(a - b·x); exponent b;
- ``log-linear``: y = a + b·x; its rate is reported per doubling of FLOPs (b·ln 2).

The power forms need an accuracy in [0, 1); each fit returns NaN parameters where it fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

SMALLEST_ERROR = 1e-9
FLOOR_STEPS = 50


@dataclass(frozen=True)
class Form:
    name: str
    parameters: int
    rate: str  # what the exponent means
    fit_many: Callable[[np.ndarray, np.ndarray], np.ndarray]  # x (m,), Y (replicates, m) -> (replicates, parameters)
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]  # params (..., p), x (k,) -> (..., k)
    exponent: Callable[[np.ndarray], np.ndarray]  # params (..., p) -> (...)
    needs_accuracy: bool = True

    def fit(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.fit_many(x, y[None, :])[0]


def _line(x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares (intercept, slope) of each row of ``targets`` on ``x``."""
    design = np.column_stack([np.ones_like(x), x])
    return targets @ np.linalg.pinv(design).T


def _errors(y: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - y, SMALLEST_ERROR, None)


def _power_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    intercept_slope = _line(x, np.log(_errors(y)))
    return np.column_stack([intercept_slope[:, 0], -intercept_slope[:, 1]])


def _power_predict(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=float)
    return 1.0 - np.exp(params[..., 0:1] - params[..., 1:2] * x)


def _saturating_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares in the error by variable projection, for every row of ``y`` at once: for
    each candidate floor e_inf (a grid below the smallest error, then a finer grid around the
    best), ln(error - e_inf) is a line in x; the floor whose curve misses the errors least wins.
    (scipy's curve_fit does one fit at a time, about 40 ms each: too slow for hundreds of
    bootstrap refits.)"""
    errors = _errors(np.atleast_2d(y))
    smallest = errors.min(axis=1, keepdims=True)
    fractions = np.linspace(0.0, 0.98, FLOOR_STEPS)
    best = _best_floor(x, errors, smallest * fractions)
    step = smallest * (fractions[1] - fractions[0])
    finer = np.clip(best[:, :1] + step * np.linspace(-1, 1, FLOOR_STEPS), 0.0, 0.99 * smallest)
    return _best_floor(x, errors, finer)


def _best_floor(x: np.ndarray, errors: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """(e_inf, a, b) per row: the floor among ``floors`` (rows x candidates) that fits best."""
    remainders = np.log(np.clip(errors[:, None, :] - floors[:, :, None], SMALLEST_ERROR, None))
    lines = _line(x, remainders.reshape(-1, len(x))).reshape(*remainders.shape[:2], 2)
    fitted = floors[:, :, None] + np.exp(lines[..., 0:1] + lines[..., 1:2] * x)
    misses = np.square(fitted - errors[:, None, :]).sum(axis=2)
    choice = np.nanargmin(np.where(lines[..., 1] <= 0, misses, np.inf), axis=1) if np.isfinite(misses).any() else np.zeros(len(errors), int)
    rows = np.arange(len(errors))
    found = np.column_stack([floors[rows, choice], lines[rows, choice, 0], -lines[rows, choice, 1]])
    found[~np.isfinite(misses[rows, choice]) | (lines[rows, choice, 1] > 0)] = np.nan
    return found


def _saturating_predict(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=float)
    return 1.0 - params[..., 0:1] - np.exp(params[..., 1:2] - params[..., 2:3] * x)


def _log_linear_predict(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=float)
    return params[..., 0:1] + params[..., 1:2] * x


POWER = Form("power", 2, "b in error ∝ FLOPs^-b", _power_fit, _power_predict, lambda p: np.asarray(p)[..., 1])
SATURATING = Form("saturating", 3, "b in error - e_inf ∝ FLOPs^-b", _saturating_fit, _saturating_predict, lambda p: np.asarray(p)[..., 2])
LOG_LINEAR = Form(
    "log-linear", 2, "metric gain per doubling of FLOPs", _line, _log_linear_predict, lambda p: np.asarray(p)[..., 1] * math.log(2), needs_accuracy=False
)
FORMS = {form.name: form for form in (POWER, SATURATING, LOG_LINEAR)}


def leave_one_out_rmse(form: Form, x: np.ndarray, y: np.ndarray) -> float:
    """Root mean square error of predicting each point from a fit to the others (inf where a fit
    fails or too few points remain for the form's parameters)."""
    if len(x) - 1 < form.parameters:
        return math.inf
    errors = []
    for held in range(len(x)):
        keep = np.arange(len(x)) != held
        params = form.fit(x[keep], y[keep])
        if not np.all(np.isfinite(params)):
            return math.inf
        errors.append(float(form.predict(params, x[held : held + 1])[0]) - y[held])
    return float(np.sqrt(np.mean(np.square(errors))))
