import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from scaling_lab import cli
from scaling_lab.report import analysis
from scaling_lab.report.run import load_run
from scaling_lab.errors import ScalingLabError
from scaling_lab.files import read_parquet
from scaling_lab.study import adaptive, load_study, run_dir_for, run_study
from scaling_lab.study.derive import derive_coefficients
from scaling_lab.trial import trial_function_problems
from tests.helpers import fake_trial, subprocess_env, write_study

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_COLUMNS = [
    "trial_id", "state", "error", "seed", "config_id", "spec_hash", "spec", "resolution", "feature_network", "fusion",
    "channels", "backbone.width", "backbone.depth", "param.feature_network", "group", "AP", "AP50", "params", "flops",
    "flops_elementwise", "activations", "latency_ms", "flops_ratio", "wall_time_s", "epochs_done", "curve", "started", "finished",
]


@pytest.fixture
def cli_main(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(dict.fromkeys(cli.COMMAND_MODULES + ("scaling_lab.study.commands",))))
    return cli.main


def test_local_study_records_every_state(tmp_path):
    path = write_study(
        tmp_path,
        search_space={
            "parameters": {"feature_network": ["fpn", "panet", "bifpn"], "channels": {"type": "grid", "values": [16, 64]}},
            "constraints": {"flops": {"max": 1.5, "relative": True}},
        },
    )
    config = load_study(path)
    frame = run_study(config, trial_function=fake_trial, out=None)
    assert len(frame) == 12
    counts = frame["state"].value_counts().to_dict()
    assert counts == {"complete": 4, "rejected": 6, "failed": 2}
    failed = frame[frame["state"] == "failed"]
    assert failed["error"].str.contains("CUDA out of memory").all()
    rejected = frame[frame["state"] == "rejected"]
    assert rejected["error"].str.contains("flops .* above the constraint's max 1.5x the base", regex=True).all()
    assert (rejected["channels"] == 64).all() and rejected["flops"].notna().all()
    stored = pd.read_parquet(config.run_dir / "results.parquet")
    assert [c for c in CONTRACT_COLUMNS if c not in stored.columns] == []
    assert pd.read_csv(config.run_dir / "results.csv")["trial_id"].tolist() == stored["trial_id"].tolist()
    complete = stored[stored["state"] == "complete"]
    assert complete.groupby("config_id")["seed"].apply(sorted).tolist() == [[0, 1], [0, 1]]
    assert json.loads(complete.iloc[0]["spec"])["channels"] == 16
    assert json.loads(complete.iloc[0]["curve"])[0]["epoch"] == 1
    info = json.loads((config.run_dir / "study.json").read_text())
    assert info["planned_trials"] == 12 and info["finished"] is True and info["objectives"] == [{"metric": "AP", "direction": "maximize"}]
    assert optuna.load_study(study_name="tiny", storage=config.storage_url).trials  # optuna-dashboard can open it
    # Running it again has nothing left to do.
    assert len(run_study(config, trial_function=fake_trial, out=None)) == 12


PLANNED_AHEAD_GROUPS = [
    {"name": "narrow", "search_space": {"parameters": {"channels": {"type": "grid", "values": [16, 24]}}}},
    {"name": "wide", "search_space": {"parameters": {"channels": {"type": "grid", "values": [48, 64]}}}},
    {"name": "then", "search_space": {"parameters": {"channels": {"type": "best", "group": "narrow"}, "feature_network": ["fpn", "bifpn"]}}},
]


def test_independent_grid_groups_are_planned_ahead_gating_groups_then_costliest_first(tmp_path):
    """Every grid group that takes no other group's winner is enqueued at the start (a free
    worker, or Ray's free CPUs, takes the next group's trials): first the groups whose winner
    another group takes, then the most FLOPs first; a group that takes a winner is planned once
    that is known."""
    path = write_study(tmp_path, search_space=None, groups=PLANNED_AHEAD_GROUPS, repeats=1)
    frame = run_study(load_study(path), trial_function=fake_trial, out=None).sort_values("trial_id")
    assert (frame["state"] == "complete").all()
    assert frame["group"].tolist() == ["narrow", "narrow", "wide", "wide", "then", "then"]
    assert frame["channels"].tolist()[:4] == [24, 16, 64, 48]
    assert set(frame["channels"].tolist()[4:]) == {24}  # the winner of "narrow" (fake AP grows with channels)


def test_a_later_group_planned_ahead_runs_first_and_reports_keep_the_study_order(tmp_path):
    path = write_study(tmp_path, search_space=None, groups=PLANNED_AHEAD_GROUPS[:2], repeats=1)
    config = load_study(path)
    frame = run_study(config, trial_function=fake_trial, out=None).sort_values("trial_id")
    assert frame["channels"].tolist() == [64, 48, 24, 16]
    configs = analysis.configurations(load_run(config.run_dir))
    assert configs["group"].tolist() == ["narrow", "narrow", "wide", "wide"]
    assert configs["channels"].tolist() == [24, 16, 64, 48]  # within a group, as its trials ran


def test_with_early_stopping_groups_run_in_turn_in_grid_order(tmp_path):
    """A stopping rule compares a trial with those that reached its epoch before it: the plan
    is not reordered across groups there."""
    path = write_study(tmp_path, search_space=None, groups=PLANNED_AHEAD_GROUPS, repeats=1, early_stopping={"type": "median", "min_epochs": 1})
    frame = run_study(load_study(path), trial_function=fake_trial, out=None).sort_values("trial_id")
    assert frame["group"].tolist() == ["narrow", "narrow", "wide", "wide", "then", "then"]
    assert frame["channels"].tolist()[:4] == [16, 24, 48, 64]


def test_sampled_study_with_pruner_and_seeds(tmp_path):
    path = write_study(
        tmp_path,
        search_space={"parameters": {"channels": {"type": "int", "low": 8, "high": 32, "step": 8}, "backbone.width": {"type": "log_float", "low": 0.2, "high": 0.3}}},
        sampler={"type": "tpe", "trials": 3},
        early_stopping={"type": "median", "min_epochs": 1},
        task={"synthetic": {"train_images": 16, "val_images": 8, "image_size": 128, "max_object_size": 96}, "epochs": 3, "latency": False},
    )
    frame = run_study(load_study(path), trial_function=fake_trial, out=None)
    assert len(frame) == 6 and set(frame["state"]) <= {"complete", "pruned"}
    assert frame.groupby("config_id")["seed"].apply(sorted).tolist() == [[0, 1]] * 3


def test_cli_run_status_and_bad_input(tmp_path, cli_main, capsys, monkeypatch):
    path = write_study(tmp_path, search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}}, repeats=1)
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    monkeypatch.chdir(tmp_path)  # the report goes to reports/<name>/
    assert cli_main(["run", str(path)]) == 0
    assert "2/2 done: 2 complete" in capsys.readouterr().out
    assert cli_main(["status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["complete"] == 2 and status["planned_trials"] == 2 and status["finished"] is True
    assert run_dir_for(path) == run_dir_for(tmp_path / "run") == (tmp_path / "run").resolve()
    assert cli_main(["status", str(tmp_path / "run")]) == 0
    assert "2/2 trials done (finished)" in capsys.readouterr().out
    assert cli_main(["run", str(path), "--set", "sampler.type=annealing"]) == 2
    error = capsys.readouterr().err
    assert "tiny.yaml: sampler.type: 'annealing' is not valid; valid values are grid, random, tpe, nsga2" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"epochs": 3}, "unknown key(s) 'epochs'; valid keys are name, experiment"),
        ({"sampler": {"type": "grid", "trials": 5}}, "sampler.trials: a grid study runs every grid point"),
        ({"objectives": [{"metric": "mAP"}]}, "objectives[0].metric: 'mAP' is not valid; valid values are AP"),
        ({"early_stopping": {"type": "asha"}, "objectives": ["AP", "flops"]}, "early stopping needs a single objective"),
        ({"task": {"epochs": "ten"}}, "task.epochs: expected an integer"),
        ({"resources": {"gpus": -1}}, "resources.gpus: expected a number of at least 0"),
        ({"storage": "postgres"}, "storage: 'postgres' is not valid"),
        ({"base": "efficientdet-d9"}, "base: 'efficientdet-d9' is neither a preset"),
        ({"search_space": "missing.yaml"}, "search space file 'missing.yaml' does not exist"),
        ({"search_space": {"parameters": {"channels": 16}}, "groups": []}, "give either search_space"),
        ({"experiment": "ablation"}, "experiment: 'ablation' is not valid"),
        ({"search_space": {"parameters": {"channels": {"type": "grid", "values": []}}}}, "parameters.channels.values: expected a non-empty list"),
    ],
)
def test_bad_studies_name_file_key_and_valid_values(tmp_path, changes, fragment):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ScalingLabError) as error:
        load_study(path)
    assert str(error.value).startswith(str(path))
    assert fragment in str(error.value)


def test_bad_profile_and_override(tmp_path):
    path = write_study(tmp_path)
    with pytest.raises(ScalingLabError, match="--profile 'gpu' is not defined"):
        load_study(path, profile="gpu")
    with pytest.raises(ScalingLabError, match="--set 'task.epochs': expected key=value"):
        load_study(path, overrides=["task.epochs"])
    assert load_study(path, overrides=["task.epochs=3"]).budget.epochs == 3


def test_infeasible_grid_constraint_stops_before_training(tmp_path):
    path = write_study(tmp_path, search_space={"parameters": {"channels": [16, 24]}, "constraints": {"flops": {"min": 5, "relative": True}}})
    with pytest.raises(ScalingLabError, match="constraints: every one of the 2 candidates .* breaks them"):
        run_study(load_study(path), trial_function=fake_trial, out=None)


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "studies").glob("*.yaml")))
def test_shipped_studies_load(study):
    data = yaml.safe_load((ROOT / "studies" / study).read_text())
    for profile in [None, *data.get("profiles", {})]:
        config = load_study(ROOT / "studies" / study, profile=profile)
        assert config.experiment in ("quickstart", "compound_grid", "fpn_ablation", "fusion_ablation", "pareto", "proxy_findings")


def test_compound_derivation_cpu_profile(tmp_path, cli_main, capsys, monkeypatch):
    config = load_study(ROOT / "studies" / "compound_grid.yaml", profile="cpu", overrides=["task.epochs=1", "repeats=1"], run_dir=tmp_path / "compound")
    frame = run_study(config, trial_function=fake_trial, out=None)
    assert set(frame["group"]) == {"grid", "compound", "width", "depth", "resolution", "fast"}
    assert (frame["state"] == "rejected").sum() >= 1
    derivation = derive_coefficients(config.run_dir)
    assert derivation.within_constraint
    product = derivation.coefficients["alpha"] * derivation.coefficients["beta"] ** 2 * derivation.coefficients["gamma"] ** 2
    assert product == pytest.approx(2.0, rel=1e-4)
    compound = frame[frame["group"] == "compound"]
    assert (compound["param.alpha"] == derivation.coefficients["alpha"]).all()
    assert cli_main(["derive", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "within the flops constraint" in out and "not shown to be worse than it" in out and "Bonferroni" in out


RUNNER_SCRIPT = """
import sys
from scaling_lab.study import load_study, run_study
from tests.helpers import fake_trial
run_study(load_study({path!r}), trial_function=fake_trial, out=None)
"""


def test_sigkill_mid_study_then_resume(tmp_path):
    path = write_study(tmp_path, task={"synthetic": {"train_images": 16}, "epochs": 2})
    config = load_study(path)
    env = subprocess_env(FAKE_TRIAL_SLEEP="0.4")
    script = RUNNER_SCRIPT.format(path=str(path))
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            table = config.run_dir / "results.parquet"
            if table.exists() and (read_parquet(table)["state"] == "complete").sum() >= 2:
                break
        time.sleep(0.5)  # land inside a trial
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = pd.read_parquet(config.run_dir / "results.parquet")
    kept = before[before["state"].isin(["complete", "failed"])]
    assert 2 <= len(kept) < 12
    frame = run_study(config, trial_function=fake_trial, out=None)
    assert len(frame) == 12 and set(frame["state"]) == {"complete", "failed"}
    assert frame.groupby(["config_id", "seed"]).size().max() == 1
    after = frame.set_index("trial_id")
    for _, row in kept.iterrows():  # finished trials were kept, not run again
        assert after.loc[row["trial_id"], "finished"] == row["finished"]


@pytest.mark.slow
def test_real_trainer_tiny_study(tmp_path):
    path = write_study(tmp_path, search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}}, repeats=1)
    frame = run_study(load_study(path, overrides=["task.latency=false"]), out=None)
    assert frame["state"].tolist() == ["complete", "complete"]
    assert frame["AP"].between(0, 1).all() and (frame["epochs_done"] == 1).all()


def test_median_pruner_stops_a_clearly_bad_configuration(tmp_path):
    # Optuna's median pruner judges a trial only after 5 finished ones (its start-up count); the
    # sixth configuration, channels 8, reaches AP 0.005 at epoch 1 where the others had 0.02 or more.
    path = write_study(
        tmp_path,
        search_space={"parameters": {"channels": {"type": "grid", "values": [64, 56, 48, 40, 32, 8]}}},
        early_stopping={"type": "median", "min_epochs": 1},
        task={"synthetic": {"train_images": 16, "val_images": 8, "image_size": 128, "max_object_size": 96}, "epochs": 3, "latency": False},
        repeats=1,
    )
    config = load_study(path)
    assert optuna.pruners.MedianPruner()._n_startup_trials == 5
    frame = run_study(config, trial_function=fake_trial, out=None).set_index("channels")
    assert frame.loc[8, "state"] == "pruned" and frame.loc[8, "epochs_done"] == 1
    assert (frame.drop(index=8)["state"] == "complete").all() and (frame.drop(index=8)["epochs_done"] == 3).all()


def test_the_real_and_the_fake_trial_functions_take_what_a_study_passes(tmp_path):
    from scaling_lab.train import run_trial

    assert trial_function_problems(run_trial) == []
    assert trial_function_problems(fake_trial) == []

    def no_seed(spec, task, budget, report=None):
        raise AssertionError("never called")

    assert trial_function_problems(no_seed) == [f"it takes no parameter {name!r}" for name in ("seed", "checkpoint_dir", "device", "progress")]
    with pytest.raises(ScalingLabError, match="trial_function 'no_seed': it takes no parameter 'seed'.*TrialFunction"):
        run_study(load_study(write_study(tmp_path)), trial_function=no_seed, out=None)
    assert not (tmp_path / "run").exists()


def resumed_trial(spec, task, budget, report=None, seed=0, checkpoint_dir=None, device=None, progress=False):
    """``fake_trial`` resumed from a checkpoint that carries an hour of earlier training."""
    return dataclasses.replace(fake_trial(spec, task, budget, report, seed, checkpoint_dir, device, progress), wall_time_s=3600.0)


def test_a_resumed_trial_s_wall_time_counts_its_earlier_attempts(tmp_path):
    config = load_study(write_study(tmp_path, search_space={"parameters": {"channels": [16]}}, repeats=1))
    frame = run_study(config, trial_function=resumed_trial, out=None)
    assert frame["state"].tolist() == ["complete"] and frame["wall_time_s"].tolist() == [3600.0]
    assert adaptive.spent(frame) == (1, 1.0)  # a budget in trial-hours counts the hour of the earlier attempt
