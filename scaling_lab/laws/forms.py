"""The curve forms a scaling rule is fitted with, metric y against x = ln(FLOPs / reference):

- ``power``: the error falls as a power of FLOPs, 1 - y = exp(a - b·x); exponent b;
- ``saturating``: the same towards an irreducible error, 1 - y = e_inf + exp(a - b·x); exponent b;
- ``log-linear``: y = a + b·x; its rate is reported per doubling of FLOPs (b·ln 2).

The power forms need an accuracy in [0, 1); each fit returns NaN parameters where it fails.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize

SMALLEST_ERROR = 1e-9


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


def _saturating_one(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    errors = _errors(y)
    floor = 0.5 * errors.min()
    start_line = _line(x, np.log(np.clip(errors - floor, SMALLEST_ERROR, None))[None, :])[0]
    start = [floor, start_line[0], max(-start_line[1], 1e-3)]

    def model(x_: np.ndarray, e_inf: float, a: float, b: float) -> np.ndarray:
        return e_inf + np.exp(a - b * x_)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found, _ = optimize.curve_fit(
                model, x, errors, p0=start, bounds=([0.0, -50.0, 0.0], [max(errors.min(), SMALLEST_ERROR), 50.0, 20.0]), maxfev=2000
            )
    except (RuntimeError, ValueError):
        return np.full(3, math.nan)
    return found


def _saturating_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([_saturating_one(x, row) for row in y])


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
