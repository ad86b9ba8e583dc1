"""The compound grid's response surface: a known optimum is recovered with intervals that hold
it, a surface the quadratic cannot describe is called poor, bad grids are clear errors."""

import math

import numpy as np
import pytest

from scaling_lab.cli import main
from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.surface import fit_surface
from tests.laws_tables import grid_rows, info, table, write_run

GRID_INFO = info(derive_group="grid")


def test_known_optimum_is_recovered_inside_its_intervals():
    frame = table(grid_rows(np.random.default_rng(1), optimum=(1.25, 1.08)))
    fit = fit_surface(GRID_INFO, frame, "synthetic", replicates=200)
    assert fit.optimum["alpha"] == pytest.approx(1.25, abs=0.01)
    assert fit.optimum["beta"] == pytest.approx(1.08, abs=0.005)
    assert fit.optimum["alpha"] * fit.optimum["beta"] ** 2 * fit.optimum["gamma"] ** 2 == pytest.approx(2.0)
    for name, truth in (("alpha", 1.25), ("beta", 1.08), ("gamma", math.sqrt(2 / (1.25 * 1.08**2)))):
        low, high = fit.intervals[name]
        assert low <= truth <= high, name
    assert fit.predicted == pytest.approx(0.5, abs=0.005)
    assert fit.quality.poor is False and not fit.on_edge
    assert len(fit.region) >= 3  # a polygon in (alpha, beta)
    text = fit.beside({"alpha": 1.2, "beta": 1.1, "gamma": 1.17}, 0.49)
    assert "grid winner" in text and "fitted optimum" in text and "1.25" in text


def test_optimum_beyond_the_grid_is_flagged_on_its_edge():
    frame = table(grid_rows(np.random.default_rng(2), optimum=(1.9, 1.0)))
    fit = fit_surface(GRID_INFO, frame, "synthetic", replicates=50)
    assert fit.on_edge and "edge of the grid" in fit.beside({"alpha": 1.5, "beta": 1.0, "gamma": 1.15}, 0.4)


def test_a_surface_the_quadratic_misses_is_poor_and_no_optimum_is_reported():
    ridge = lambda x, y: 0.5 + 0.05 * math.cos(25 * x) * math.cos(40 * y)  # noqa: E731 - wavy, far from quadratic
    frame = table(grid_rows(np.random.default_rng(3), noise=0.002, surface=ridge))
    fit = fit_surface(GRID_INFO, frame, "synthetic", replicates=50)
    assert fit.quality.poor is True and fit.quality.p_value < 0.05
    assert "not reported" in fit.beside({"alpha": 1.0, "beta": 1.0, "gamma": 1.41}, 0.5)


def test_one_seed_per_cell_judges_the_fit_by_the_image_bootstrap():
    frame = table(grid_rows(np.random.default_rng(4), seeds=1, noise=0.004))
    frame["AP_ci_low"], frame["AP_ci_high"] = frame["AP"] - 0.008, frame["AP"] + 0.008
    fit = fit_surface(GRID_INFO, frame, "synthetic", replicates=100)
    assert fit.quality.poor is False and "image-bootstrap" in fit.quality.test
    assert fit.intervals["alpha"][0] < fit.intervals["alpha"][1]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f[(f["param.alpha"] <= 1.1) & (f["param.beta"] <= 1.05)], "too few points for the response surface"),
        (lambda f: f.assign(**{"param.gamma": 1.0}), "alpha·beta²·gamma² ranges from"),
        (lambda f: f[f["param.beta"] == 1.0], "determine only 3 of"),
        (lambda f: f[(f["param.beta"] == 1.0) | (f["param.alpha"] == 1.0)], "determine only"),
        (lambda f: f.drop(columns=["AP"]), "no column(s) AP"),
    ],
)
def test_bad_grids_are_clear_errors(change, message):
    frame = change(table(grid_rows(np.random.default_rng(5))))
    with pytest.raises(ScalingLabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_surface(GRID_INFO, frame, "synthetic", replicates=10)


def test_derive_prints_the_grid_winner_beside_the_fitted_optimum(tmp_path, capsys):
    frame = table(grid_rows(np.random.default_rng(6)))
    run = write_run(tmp_path / "run", {**GRID_INFO, "seeds": [0, 1, 2], "groups": [{"name": "grid", "constraints": []}]}, frame)
    assert main(["derive", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best of group 'grid'" in out and "grid winner" in out and "fitted optimum" in out and "residuals within the seed noise" in out
