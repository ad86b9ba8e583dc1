"""A study's numbers mean what its file says: one run folder per definition, one winner rule
for the runner, ``derive`` and the report, and trials that never run twice or get lost."""

import json

import optuna
import pandas as pd
import pytest

from scaling_lab import cli
from scaling_lab.errors import ScalingLabError
from scaling_lab.report import load_run, report_dir_for
from scaling_lab.report.analysis import compound_grid, configurations, derived_coefficients
from scaling_lab.study import load_study, run_dir_for, run_study
from scaling_lab.study.derive import derive_coefficients
from scaling_lab.study.search_space import config_id
from scaling_lab.study.winner import WinnerRule, decide_winner

from tests.helpers import fake_trial, write_study

TWO_STEP_GROUPS = [
    {"name": "search", "search_space": {"parameters": {"alpha": {"type": "grid", "values": [1.0, 1.2]}, "beta": {"type": "grid", "values": [1.0, 1.1]}, "gamma": {"type": "derived", "rule": "compound_gamma"}, "phi": 1}}},
    {"name": "scaled", "search_space": {"parameters": {"alpha": {"type": "best", "group": "search"}, "beta": {"type": "best", "group": "search"}, "gamma": {"type": "best", "group": "search"}, "phi": {"type": "choice", "values": [1, 2]}}}},
]


@pytest.fixture
def cli_main(monkeypatch):
    monkeypatch.setattr("scaling_lab.study.session.default_trial_function", lambda: fake_trial)
    return cli.main


def test_profile_gets_its_own_run_folder_and_a_changed_definition_is_refused(tmp_path, cli_main, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, run_dir=None, repeats=1, search_space={"parameters": {"feature_network": ["fpn", "bifpn"]}},
                       profiles={"cpu": {"task": {"epochs": 2}}})
    assert load_study(path).run_dir == tmp_path / "runs" / "tiny"
    assert load_study(path, profile="cpu").run_dir == tmp_path / "runs" / "tiny-cpu"
    assert run_dir_for(path, "cpu") == tmp_path / "runs" / "tiny-cpu"
    assert cli_main(["run", str(path), "--profile", "cpu"]) == 0
    assert cli_main(["run", str(path)]) == 0  # the full study does not reuse the profile's trials
    full = pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")
    assert (full["epochs_done"] == 1).all() and len(full) == 2
    capsys.readouterr()
    # The same run folder with another definition: exit 2 naming the key, nothing touched.
    assert cli_main(["run", str(path), "--set", "task.epochs=3"]) == 2
    error = capsys.readouterr().err
    assert "budget.epochs: 1 -> 3" in error and "--run-dir" in error and "Traceback" not in error
    assert pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet").equals(full)
    # What cannot change a result may change.
    assert cli_main(["run", str(path), "--set", "resources.cpus=2", "--set", "backend=local"]) == 0
    # Each run folder gets its own report.
    assert report_dir_for(tmp_path / "runs" / "tiny") == tmp_path / "reports" / "tiny"
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file() and (tmp_path / "reports" / "tiny-cpu" / "index.html").is_file()
    assert report_dir_for(tmp_path / "elsewhere" / "run") == tmp_path / "elsewhere" / "run" / "report"


def test_a_run_folder_holds_one_study(tmp_path):
    path = write_study(tmp_path, repeats=1, search_space={"parameters": {"feature_network": ["fpn"]}})
    run_study(load_study(path), trial_function=fake_trial, out=None)
    (tmp_path / "other").mkdir()
    other = write_study(tmp_path / "other", name="other", run_dir=str(tmp_path / "run"), repeats=1,
                        search_space={"parameters": {"feature_network": ["fpn"]}})
    with pytest.raises(ScalingLabError, match="holds the study 'tiny'"):
        run_study(load_study(other), trial_function=fake_trial, out=None)


def _table(rows):
    frame = pd.DataFrame(rows, columns=["group", "config_id", "seed", "state", "AP", "param.alpha", "param.channels", "param.separable"])
    return frame


def test_winner_is_the_mean_over_all_planned_seeds():
    rule = WinnerRule("AP", "maximize", seeds=2)
    frame = _table([
        # a: seeds 0.50 and 0.10 (mean 0.30): its first seed alone would win
        ("g", "a", 0, "complete", 0.50, 1.0, 16, True), ("g", "a", 1, "complete", 0.10, 1.0, 16, True),
        # b: 0.40 and 0.40 (mean 0.40): the winner
        ("g", "b", 0, "complete", 0.40, 1.2, 24, False), ("g", "b", 1, "complete", 0.40, 1.2, 24, False),
        # c: one seed of 0.90 and one failed: incomplete, may not win on its surviving seed
        ("g", "c", 0, "complete", 0.90, 1.4, 32, True), ("g", "c", 1, "failed", None, 1.4, 32, True),
        ("other", "d", 0, "complete", 0.99, 2.0, 8, True), ("other", "d", 1, "complete", 0.99, 2.0, 8, True),
    ])
    winner = decide_winner(frame, "g", rule)
    assert winner.config_id == "b" and winner.score == pytest.approx(0.40) and winner.seeds == 2
    json.dumps(winner.values)  # numpy integers and booleans from the table are JSON values
    assert winner.values == {"alpha": 1.2, "channels": 24, "separable": False}
    flags = winner.ranking.set_index("config_id")
    assert flags.loc["c", "incomplete"] and not flags.loc["c", "eligible"]
    assert decide_winner(frame, "g", WinnerRule("AP", "minimize", seeds=2)).config_id == "a"
    with pytest.raises(ScalingLabError, match="no configuration with all 3 seed"):
        decide_winner(frame, "g", WinnerRule("AP", "maximize", seeds=3))


def _varying_trial(spec, task, budget, report=None, seed=0, **_):
    """AP that depends on the model's size and the seed, so each grid cell has its own score."""
    ap = 0.3 + 0.01 * spec.backbone.depth + 0.001 * spec.channels + 0.005 * seed
    if report is not None:
        report(1, {"AP": ap})
    return fake_trial.__globals__["TrialResult"](spec.spec_hash, seed, {"AP": ap}, 1, 1, 1, 1, None, 0.01, [{"epoch": 1, "AP": ap}])


def test_runner_derive_and_report_agree_on_the_winner(tmp_path, cli_main, capsys):
    path = write_study(tmp_path, search_space=None, groups=TWO_STEP_GROUPS, objectives=[{"metric": "AP", "direction": "minimize"}])
    config = load_study(path)
    frame = run_study(config, trial_function=_varying_trial, out=None)
    grid = frame[frame["group"] == "search"]
    means = grid.groupby("config_id")["AP"].mean()
    expected = means.idxmin()  # minimized objective, group not named "grid"
    stored = optuna.load_study(study_name="tiny", storage=config.storage_url).user_attrs["best:search"]
    assert stored["config_id"] == expected
    derivation = derive_coefficients(config.run_dir)
    assert derivation.group == "search" and derivation.score == pytest.approx(means[expected])
    winner_row = grid[grid["config_id"] == expected].iloc[0]
    assert derivation.coefficients["alpha"] == winner_row["param.alpha"] and derivation.coefficients["beta"] == winner_row["param.beta"]
    run = load_run(config.run_dir)
    chosen = derived_coefficients(run, compound_grid(run, configurations(run)))
    assert chosen["config_id"] == expected
    scaled = frame[frame["group"] == "scaled"]
    assert (scaled["param.alpha"] == winner_row["param.alpha"]).all() and len(scaled) == 4


def test_best_over_integer_and_boolean_parameters(tmp_path):
    groups = [
        {"name": "first", "search_space": {"parameters": {"channels": {"type": "grid", "values": [16, 24]}, "separable": [True, False]}}},
        {"name": "second", "search_space": {"parameters": {"channels": {"type": "best", "group": "first"}, "separable": {"type": "best", "group": "first"}, "feature_network": ["fpn", "bifpn"]}}},
    ]
    path = write_study(tmp_path, search_space=None, groups=groups, repeats=1)
    frame = run_study(load_study(path), trial_function=fake_trial, out=None)
    second = frame[frame["group"] == "second"]
    assert len(second) == 2 and (second["state"] == "complete").all()
    assert (second["channels"] == 24).all()  # fake AP grows with channels


def test_grid_is_never_cut_short_by_the_rejection_guard_and_unmeasurable_specs_fail_alone(tmp_path, monkeypatch):
    monkeypatch.setattr("scaling_lab.study.session.MAX_CONSECUTIVE_REJECTIONS", 2)
    from scaling_lab.study import candidate, planning, session

    real = candidate.measured_costs

    def flaky_counts(spec, base_costs=None):
        if spec.channels == 40:
            raise MemoryError("fvcore ran out of memory (simulated)")
        return real(spec, base_costs)

    monkeypatch.setattr(candidate, "measured_costs", flaky_counts)
    def flaky_costs(spec, base_costs=None):
        return flaky_counts(spec, base_costs)[0]

    monkeypatch.setattr(session, "cost_counts", flaky_costs)  # the base's
    monkeypatch.setattr(planning, "cost_counts", flaky_costs)  # the grid's feasibility check
    path = write_study(tmp_path, repeats=1, search_space={
        "parameters": {"channels": {"type": "grid", "values": [64, 72, 80, 40, 16]}},
        "constraints": {"flops": {"max": 1.2, "relative": True}},
    })
    frame = run_study(load_study(path), trial_function=fake_trial, out=None).set_index("channels")
    assert frame.loc[[64, 72, 80], "state"].eq("rejected").all()
    assert frame.loc[40, "state"] == "failed" and "measuring failed: MemoryError" in frame.loc[40, "error"]
    assert frame.loc[16, "state"] == "complete"
    reasons = [t.user_attrs.get("reason", "") for t in optuna.load_study(study_name="tiny", storage=load_study(path).storage_url).trials]
    assert sum("rejected by constraint" in r for r in reasons) == 3 and all(len(r) <= 300 for r in reasons)


def test_sampled_group_enqueues_seeds_a_started_configuration_lacks(tmp_path):
    path = write_study(tmp_path, sampler={"type": "random", "trials": 2}, repeats=3,
                       search_space={"parameters": {"channels": {"type": "int", "low": 8, "high": 64, "step": 8}}})
    config = load_study(path)
    config.run_dir.mkdir()
    study = optuna.create_study(study_name="tiny", storage=config.storage_url, direction="maximize")
    # A worker killed right after tagging a fresh configuration's first seed, before enqueuing the others.
    trial = study.ask()
    orphan = config_id("", {"channels": trial.suggest_int("channels", 8, 64, step=8)})
    for key, value in (("group", ""), ("seed", 0), ("config_id", orphan)):
        trial.set_user_attr(key, value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    frame = run_study(config, trial_function=fake_trial, out=None)
    assert sorted(frame.loc[frame["config_id"] == orphan, "seed"]) == [0, 1, 2]
    assert frame.groupby("config_id")["seed"].apply(sorted).tolist() == [[0, 1, 2]] * 2


@pytest.mark.slow
def test_the_same_configuration_and_seed_scores_the_same_locally_and_under_ray(tmp_path):
    """Same thread count (resources.cpus), data order and seeds in both backends: on one machine
    a (configuration, seed) gives the same AP bit for bit."""
    pytest.importorskip("ray")
    path = write_study(tmp_path, repeats=1, search_space={"parameters": {"feature_network": ["panet"]}},
                       task={"synthetic": {"train_images": 16, "val_images": 8, "image_size": 128, "max_object_size": 96},
                             "batch_size": 8, "epochs": 2, "latency": False},
                       resources={"cpus": 1})
    local = run_study(load_study(path, run_dir=tmp_path / "local"), out=None)
    ray_run = run_study(load_study(path, run_dir=tmp_path / "ray"), backend="ray", out=None)
    assert local["state"].tolist() == ray_run["state"].tolist() == ["complete"]
    assert local["AP"].iloc[0] == ray_run["AP"].iloc[0] and local["AP50"].iloc[0] == ray_run["AP50"].iloc[0]
    assert json.loads(local["curve"].iloc[0])[-1]["train_loss"] == json.loads(ray_run["curve"].iloc[0])[-1]["train_loss"]


def test_a_configuration_sampled_twice_trains_once(tmp_path):
    """Random sampling over three values for three configurations repeats values; each
    (configuration, seed) still trains exactly once."""
    path = write_study(tmp_path, sampler={"type": "random", "trials": 3}, repeats=2,
                       search_space={"parameters": {"channels": {"type": "int", "low": 8, "high": 24, "step": 8}}})
    frame = run_study(load_study(path), trial_function=fake_trial, out=None)
    assert sorted(frame["channels"].unique()) == [8, 16, 24]
    assert frame.groupby(["config_id", "seed"]).size().max() == 1 and len(frame) == 6
