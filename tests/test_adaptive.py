"""Adaptive repeats: the planner in real (fake-trial) studies, and the error rates of the
decision rule in many simulated studies (``scaling_lab.study.adaptive.simulate``)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from scaling_lab.decisions import DecisionRule, verdict_metric
from scaling_lab.errors import ScalingLabError
from scaling_lab.files import read_parquet
from scaling_lab.study import load_study, run_study
from scaling_lab.study.adaptive import simulate

from tests.helpers import adaptive_study, noisy_trial, seeds_per_network, subprocess_env


def test_seeds_go_only_to_open_comparisons_until_max(tmp_path):
    config = load_study(adaptive_study(tmp_path))
    frame = run_study(config, trial_function=noisy_trial, out=None)
    # PANet - FPN resolves at 3 seeds; BiFPN - FPN stays open, so FPN and BiFPN get seeds up to max
    assert seeds_per_network(frame) == {"bifpn": [0, 1, 2, 3, 4, 5], "fpn": [0, 1, 2, 3, 4, 5], "panet": [0, 1, 2]}
    info = json.loads((config.run_dir / "study.json").read_text())
    assert info["adaptive_repeats"]["stop"] == "max" and info["adaptive_repeats"]["open"] == 1
    assert info["planned_trials"] == 15 and info["finished"] is True
    assert info["repeats"]["min"] == 3 and info["definition"]["repeats"] == {"min": 3, "max": 6, "until": "resolved", "margin": 0.0}
    # Running it again has nothing left to do
    assert len(run_study(config, trial_function=noisy_trial, out=None)) == 15


def test_rounds_decide_on_the_metric_the_report_compares(tmp_path):
    # FLOPs first: the report compares AP, its first maximized objective, and so do the rounds
    assert verdict_metric([{"metric": "flops", "direction": "minimize"}, {"metric": "AP", "direction": "maximize"}], ["flops", "AP"]) == ("AP", True)
    assert verdict_metric([{"metric": "flops", "direction": "minimize"}], ["flops"]) == ("flops", False)
    path = adaptive_study(tmp_path)
    path.write_text(path.read_text().replace("- metric: AP\n  direction: maximize\n", "- metric: flops\n  direction: minimize\n- metric: AP\n  direction: maximize\n"))
    config = load_study(path)
    assert [o.metric for o in config.objectives] == ["flops", "AP"]
    frame = run_study(config, trial_function=noisy_trial, out=None)
    assert seeds_per_network(frame) == {"bifpn": [0, 1, 2, 3, 4, 5], "fpn": [0, 1, 2, 3, 4, 5], "panet": [0, 1, 2]}


def test_a_margin_resolves_equivalence_and_a_budget_stops_rounds(tmp_path):
    config = load_study(adaptive_study(tmp_path / "margin", margin=0.03))
    frame = run_study(config, trial_function=noisy_trial, out=None)
    info = json.loads((config.run_dir / "study.json").read_text())
    assert info["adaptive_repeats"]["stop"] == "resolved" and info["adaptive_repeats"]["open"] == 0
    assert len(frame) < 12
    budget = load_study(adaptive_study(tmp_path / "budget", budget={"trials": 11}))
    frame = run_study(budget, trial_function=noisy_trial, out=None)
    assert len(frame) == 11  # 9 first seeds + one round of 2; the next round would pass 11
    assert json.loads((budget.run_dir / "study.json").read_text())["adaptive_repeats"]["stop"] == "budget"


def test_min_max_margin_are_part_of_the_definition_and_bad_values_are_named(tmp_path):
    path = adaptive_study(tmp_path)
    run_study(load_study(path), trial_function=noisy_trial, out=None)
    for override, change in (("repeats.margin=0.02", "repeats.margin: 0.0 -> 0.02"), ("repeats.min=4", "repeats.min: 3 -> 4"), ("repeats.max=7", "repeats.max: 6 -> 7")):
        with pytest.raises(ScalingLabError, match=change):
            run_study(load_study(path, overrides=[override]), trial_function=noisy_trial, out=None)
    # the budget decides how much runs, not what a trial measures
    assert len(run_study(load_study(path, overrides=["repeats.budget.trials=100"]), trial_function=noisy_trial, out=None)) == 15
    for changes, message in (
        ({"min": 1}, "repeats.min: expected an integer of at least 2, got 1"),
        ({"max": 2}, "repeats.max: expected an integer of at least 3, got 2"),
        ({"until": "forever"}, "repeats.until: 'forever' is not valid; valid values are resolved"),
        ({"margin": -0.1}, "repeats.margin: expected a finite number >= 0, got -0.1"),
        ({"budget": {"days": 2}}, "repeats.budget: unknown key(s) 'days'; valid keys are trials, hours"),
    ):
        with pytest.raises(ScalingLabError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_study(adaptive_study(tmp_path / "bad", **changes))


RUNNER_SCRIPT = """
import sys
from scaling_lab.study import load_study, run_study
from tests.helpers import noisy_trial
run_study(load_study({path!r}), trial_function=noisy_trial, out=None)
"""


def test_sigkill_during_an_extra_round_then_resume(tmp_path):
    path = adaptive_study(tmp_path)
    config = load_study(path)
    script = RUNNER_SCRIPT.format(path=str(path))
    process = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(FAKE_TRIAL_SLEEP="0.3"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.1)
            table = config.run_dir / "results.parquet"
            if table.exists() and (read_parquet(table)["seed"] >= 3).any():  # inside the first extra round
                break
        time.sleep(0.15)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    frame = run_study(config, trial_function=noisy_trial, out=None)
    assert frame.groupby(["config_id", "seed"]).size().max() == 1
    assert seeds_per_network(frame) == {"bifpn": [0, 1, 2, 3, 4, 5], "fpn": [0, 1, 2, 3, 4, 5], "panet": [0, 1, 2]}


# --------------------------------------------------------------------------------------------
# Simulated studies: four configurations, each compared with the first (like Table 5), seed sd 1


ADAPTIVE = DecisionRule(margin=1.0, min_seeds=3, max_seeds=12)
FIXED_MAX = DecisionRule(margin=1.0, min_seeds=12, max_seeds=12)


def test_no_true_difference_gives_at_most_5_percent_false_verdicts():
    found = simulate([0, 0, 0, 0], ADAPTIVE, studies=300, seed=1)
    assert found.false_verdict <= 0.05
    assert found.equivalent > 0.1  # equal configurations do get resolved, as equivalent


def test_a_two_sd_difference_mostly_resolves_within_max_and_adaptive_spends_less():
    adaptive = simulate([0, 2, 2, 2], ADAPTIVE, studies=300, seed=2)
    fixed = simulate([0, 2, 2, 2], FIXED_MAX, studies=300, seed=2)
    assert adaptive.correct_difference > 0.9 and adaptive.false_verdict <= 0.05
    assert fixed.false_verdict <= 0.05
    assert adaptive.trials < 0.75 * fixed.trials  # 48 trials fixed, about 31 adaptive


def test_matched_flops_comparisons_more_than_10_percent_apart_get_no_verdict():
    # compound_grid's CPU profile: compound at 1.73x beside resolution-only at 2.25x (128 px can
    # only step to 160 or 192) and width-only at 1.87x
    from scaling_lab.study.families import SCALING, comparison_families

    rows = [
        {"config_id": cid, "group": group, "param.phi": 1.0, "flops_ratio": ratio, "seed": seed, "state": "complete", "AP": 0.2}
        for cid, group, ratio in (("c", "compound", 1.73), ("r", "resolution", 2.25), ("w", "width", 1.87))
        for seed in range(3)
    ]
    family = comparison_families({}, pd.DataFrame(rows))[SCALING]
    assert family.pairs == (("c", "w"),)
    assert family.excluded == {("c", "r"): "not at matched FLOPs (2.25x vs 1.73x, +30%): no verdict"}  # nothing below 1.73x to interpolate from


def scaling_rows(per_seed: dict[tuple[str, str, float, float], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"config_id": cid, "group": group, "param.phi": phi, "flops_ratio": ratio, "seed": seed, "state": "complete", "AP": value}
        for (cid, group, phi, ratio), values in per_seed.items() for seed, value in enumerate(values)
    ])


def test_a_rule_off_compounds_flops_is_interpolated_in_log_flops_per_seed_and_paired():
    from scaling_lab.decisions import decide
    from scaling_lab.study.adaptive import _grow
    from scaling_lab.study.families import SCALING, comparison_families

    # The base (phi 0, 1x) and resolution-only at 2.25x around compound's 1.73x; seed noise
    # (sd 0.02) shared by every configuration on a seed, so only a paired comparison resolves
    shared = np.random.default_rng(3).normal(0, 0.02, 4)
    weight = np.log(1.73) / np.log(2.25)  # of the upper point
    base, resolution = 0.20 + shared, 0.26 + shared
    line = (1 - weight) * base + weight * resolution
    frame = scaling_rows({
        ("b", "compound", 0.0, 1.0): list(base),
        ("c", "compound", 1.0, 1.73): list(line + 0.01 + np.array([0.001, -0.001, 0.0005, -0.0005])),  # 1 point above the line
        ("r", "resolution", 1.0, 2.25): list(resolution),
    })
    family = comparison_families({}, frame)[SCALING]
    (compound, interpolated), = family.pairs
    assert compound == "c" and dict(family.combinations[interpolated]) == pytest.approx({"b": 1 - weight, "r": weight})
    found = decide(frame, family.pairs, "AP", DecisionRule(), combinations=family.combinations)[family.pairs[0]]
    assert found.paired and found.seeds_used == (0, 1, 2, 3) and found.difference == pytest.approx(0.01)
    assert found.verdict == "better" and found.low > 0.005
    # adaptive repeats grow an open interpolated comparison's configurations: both points and compound
    open_found = {family.pairs[0]: dataclasses.replace(found, verdict="unresolved")}
    assert _grow(open_found, {"b": 4, "c": 4, "r": 4}, 6, family.combinations) == (1, {"c": 4, "b": 4, "r": 4})
    # points that share no seed give no per-seed line, and the note says so (not "no complete trial")
    apart = frame[(frame["config_id"] != "r") | (frame["seed"] == 0)].assign(seed=lambda f: f["seed"].where(f["config_id"] != "r", 9))
    unseeded = decide(apart, family.pairs, "AP", DecisionRule(), combinations=family.combinations)[family.pairs[0]]
    assert unseeded.verdict == "unresolved" and unseeded.note == f"the configurations combined into {interpolated} (b, r) have no seed in common"
    alone = decide(apart[apart["config_id"] != "c"], family.pairs, "AP", DecisionRule(), combinations=family.combinations)[family.pairs[0]]
    assert alone.note == f"c has no complete trial; the configurations combined into {interpolated} (b, r) have no seed in common"
    without_seeds = decide(apart.drop(columns="seed"), family.pairs, "AP", DecisionRule(), combinations=family.combinations)[family.pairs[0]]
    assert "seed in common" not in without_seeds.note
    # beyond the rule's last point there is nothing to interpolate: no verdict, as before
    far = scaling_rows({("b", "compound", 0.0, 1.0): [0.2] * 2, ("c", "compound", 1.0, 3.0): [0.3] * 2, ("r", "resolution", 1.0, 2.25): [0.26] * 2})
    assert comparison_families({}, far)[SCALING].excluded == {("c", "r"): "not at matched FLOPs (2.25x vs 3.00x, -25%): no verdict"}
