"""Proxy fidelity: Kendall tau of rankings with known correlation, early winners, two studies
matched by spec, and the normalized error EDF of Radosavovic et al."""

import math

import numpy as np
import pytest

from scaling_lab.cli import main
from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.design_space import complexity_weights, error_edfs, normalized_edf
from scaling_lab.laws.fidelity import across_studies, kendall_tau, kendall_taus, within_study
from tests.laws_tables import info, rows, table, write_run


def correlated_study(rho, configurations=200, seed=0):
    """Each configuration's epoch-1 AP and final AP are jointly normal with correlation ``rho``."""
    rng = np.random.default_rng(seed)
    early, final = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=configurations).T * 0.02 + 0.3
    out = []
    for index, (e, f) in enumerate(zip(early, final)):
        out += rows("search", {"channels": index}, 1, lambda s, f=f: f, {"flops": 1e8}, curve=lambda s, e=e, f=f: [e, f])
    return table(out)


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_a_ranking_with_known_correlation_gives_its_tau(rho):
    truth = 2 / math.pi * math.asin(rho)  # Kendall's tau of a bivariate normal
    (row,) = within_study(info(), correlated_study(rho), "synthetic", replicates=200)["search"]
    assert row.label == "epoch 1" and row.configurations == 200
    assert row.tau == pytest.approx(truth, abs=0.06)
    assert row.low <= truth <= row.high and row.high - row.low < 0.25


def test_vectorized_tau_is_scipys_tau_b_with_ties():
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 4, size=(20, 9)).astype(float), rng.integers(0, 4, size=(20, 9)).astype(float)
    assert kendall_taus(a, b) == pytest.approx([kendall_tau(x, y) for x, y in zip(a, b)], nan_ok=True)


def test_early_winner_against_the_final_one_with_seeds():
    def curve(early_value):
        return lambda s: [early_value + 0.001 * s, 0.0]

    rng = np.random.default_rng(1)
    finals = {"a": 0.30, "b": 0.20, "c": 0.10, "d": 0.05}
    earlies = {"a": 0.10, "b": 0.25, "c": 0.05, "d": 0.02}  # b leads early, a wins at the end
    frame = table([r for name in finals for r in rows("g", {"name": name}, 3, lambda s, v=finals[name]: v + rng.normal(0, 0.002), {"flops": 1e8}, curve=curve(earlies[name]))])
    (row,) = within_study(info(), frame, "synthetic", replicates=200)["g"]
    assert not row.same_winner and row.early_winner_final_rank == 2
    assert row.verdict == "worse" and row.winner_agreement == 0.0
    assert row.tau == pytest.approx(4 / 6)  # one of six pairs swapped


def test_two_studies_matched_by_spec_and_the_cli(tmp_path, capsys):
    cheap = correlated_study(0.9, configurations=12, seed=2)
    full = cheap.copy()
    full["AP"] = full["AP"] + np.random.default_rng(3).normal(0, 0.001, len(full))
    for frame in (cheap, full):
        frame["spec_hash"] = frame["config_id"]
    how, found = across_studies((info(), cheap, "cheap"), (info(), full, "full"), replicates=100)
    assert how == "by spec" and [r.label for r in found] == ["A epoch 1", "A end"]
    assert found[-1].tau > 0.8 and found[-1].same_winner
    a, b = write_run(tmp_path / "cheap", info(), cheap), write_run(tmp_path / "full", info(), full)
    assert main(["fidelity", str(a), str(b)]) == 0
    assert "12 shared configurations, matched by spec" in capsys.readouterr().out
    assert main(["fidelity", str(a)]) == 0
    assert "group search" in capsys.readouterr().out


def test_fidelity_needs_curves_and_shared_configurations(tmp_path, capsys):
    frame = correlated_study(0.5, configurations=5)
    no_early = frame.assign(curve="[]")
    with pytest.raises(ScalingLabError, match="no validation before their last epoch"):
        within_study(info(), no_early, "synthetic")
    with pytest.raises(ScalingLabError, match="no column\\(s\\) curve"):
        within_study(info(), frame.drop(columns=["curve"]), "synthetic")
    other = frame.assign(config_id="other:" + frame["config_id"], spec_hash="x" + frame["config_id"])
    with pytest.raises(ScalingLabError, match="share 0 configuration"):
        across_studies((info(), frame, "a"), (info(), other, "b"))
    run = write_run(tmp_path / "bare", info(), frame.drop(columns=["curve"]))
    assert main(["fidelity", str(run)]) == 2
    assert "no column(s) curve" in capsys.readouterr().err


def test_complexity_normalized_error_edf():
    edges = np.log([1.0, 10.0, 100.0])
    weights = complexity_weights(np.log([2.0, 3.0, 4.0, 20.0]), edges)
    assert weights == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])  # each occupied bin weighs the same
    errors, cumulative = normalized_edf(np.array([0.5, 0.4, 0.3, 0.2]), np.array([2.0, 3.0, 4.0, 20.0]), edges)
    assert errors.tolist() == [0.2, 0.3, 0.4, 0.5] and cumulative == pytest.approx([0.5, 2 / 3, 5 / 6, 1.0])
    frame = table(
        [r for i in range(6) for r in rows("wide", {"i": i}, 1, lambda s, i=i: 0.1 + 0.02 * i, {"flops": 1e8 * (1 + i)})]
        + [r for i in range(6) for r in rows("narrow", {"i": i}, 1, lambda s, i=i: 0.05 + 0.01 * i, {"flops": 1e8 * (1 + i)})]
    )
    edfs = {edf.group: edf for edf in error_edfs(info(), frame, "synthetic")}
    assert edfs["wide"].cumulative[-1] == pytest.approx(1.0)
    assert edfs["wide"].errors.min() < edfs["narrow"].errors.min()  # the better space's EDF starts lower
