import io
import json

import optuna
import pytest
from ray import cloudpickle

from scaling_lab.study import load_study, run_study

from tests import helpers
from tests.helpers import TINY_STUDY_TASK, adaptive_study, fake_trial, noisy_trial, read_scalars, seeds_per_network, write_study


@pytest.fixture(scope="module")
def two_node_cluster():
    """One Ray cluster of two nodes on this machine, shared by the module's tests."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(helpers)  # workers need not import tests/
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_ray_backend_on_two_nodes(tmp_path, two_node_cluster):
    path = write_study(
        tmp_path,
        search_space={"parameters": {"feature_network": ["fpn", "panet", "bifpn"], "channels": [16, 64]}, "constraints": {"flops": {"max": 1.5, "relative": True}}},
        early_stopping={"type": "asha", "min_epochs": 1},
        task={"synthetic": {"train_images": 16}, "epochs": 2},
        repeats=1,
    )
    config = load_study(path)
    frame = run_study(config, backend="ray", address=two_node_cluster.address, trial_function=fake_trial, out=None)
    assert len(frame) == 6
    assert set(frame["state"]) <= {"complete", "pruned", "failed", "rejected"}
    assert (frame["state"] == "rejected").sum() == 3 and (frame["state"] == "failed").sum() == 1
    assert frame.loc[frame["state"] == "failed", "error"].str.contains("CUDA out of memory").all()
    assert (config.run_dir / "ray").is_dir()
    # Validations reach Optuna at their epoch, as in the local backend (dashboards agree).
    trials = optuna.load_study(study_name="tiny", storage=config.storage_url).trials
    finished = [t for t in trials if t.user_attrs.get("record", {}).get("state") == "complete"]
    assert finished and all(sorted(t.intermediate_values) == [1, 2] for t in finished)
    # The same command again: the Optuna study is complete, nothing runs twice.
    assert len(run_study(config, backend="ray", address=two_node_cluster.address, trial_function=fake_trial, out=None)) == 6


@pytest.mark.slow
def test_adaptive_repeats_under_ray_plan_the_rounds_of_the_local_backend(tmp_path, two_node_cluster):
    # with a margin of 3 AP points every comparison resolves (PANet better, BiFPN equivalent to FPN)
    local_config = load_study(adaptive_study(tmp_path / "local", margin=0.03))
    local = run_study(local_config, trial_function=noisy_trial, out=None)
    config = load_study(adaptive_study(tmp_path / "ray", margin=0.03))
    frame = run_study(config, backend="ray", address=two_node_cluster.address, trial_function=noisy_trial, out=None)
    info = json.loads((config.run_dir / "study.json").read_text())
    assert info["adaptive_repeats"]["stop"] == "resolved" and info["adaptive_repeats"]["open"] == 0 and info["finished"] is True
    assert seeds_per_network(frame) == seeds_per_network(local) and len(frame) == len(local) < 12
    assert frame.groupby(["config_id", "seed"]).size().max() == 1
    assert info["adaptive_repeats"] == json.loads((local_config.run_dir / "study.json").read_text())["adaptive_repeats"]


@pytest.mark.slow
def test_trials_write_the_same_curves_on_ray_as_locally(tmp_path, two_node_cluster):
    """One writer, in the trial: the same TensorBoard runs, tags, steps and values from both backends."""
    path = write_study(tmp_path, search_space={"parameters": {"channels": [16]}}, task=TINY_STUDY_TASK, repeats=1)
    local = run_study(load_study(path, run_dir=tmp_path / "local"), out=None)
    on_ray = run_study(load_study(path, run_dir=tmp_path / "ray"), backend="ray", address=two_node_cluster.address, out=None)
    assert local["state"].tolist() == on_ray["state"].tolist() == ["complete"]
    name = f"{local['config_id'][0]}-seed0"
    assert [p.name for p in (tmp_path / "local" / "tensorboard").iterdir()] == [p.name for p in (tmp_path / "ray" / "tensorboard").iterdir()] == [name]
    curves = read_scalars(tmp_path / "local" / "tensorboard" / name)
    assert curves["val/AP"] == [(2, pytest.approx(local["AP"][0], rel=1e-6))]
    assert read_scalars(tmp_path / "ray" / "tensorboard" / name) == {tag: [(step, pytest.approx(value, rel=1e-6, nan_ok=True)) for step, value in points] for tag, points in curves.items()}
    assert not list((tmp_path / "ray" / "ray").rglob("events.out.tfevents.*"))  # Tune's own TensorBoard logger is off


def test_trials_awaiting_their_latency_are_reported_as_they_finish_training(tmp_path, two_node_cluster):
    """A group's results are told once its trials stop (latency is timed alone, by the driver);
    until then each trained trial still gets a line, so a long group does not look idle."""
    path = write_study(tmp_path, repeats=2, search_space={"parameters": {"feature_network": ["fpn"]}}, task={"latency": True})
    out = io.StringIO()
    frame = run_study(load_study(path), backend="ray", address=two_node_cluster.address, trial_function=fake_trial, out=out)
    assert frame["state"].tolist() == ["complete", "complete"] and frame["latency_ms"].gt(0).all(), frame["error"].tolist()
    lines = out.getvalue().splitlines()
    trained = [i for i, line in enumerate(lines) if " trained (AP " in line and "latency is timed alone" in line]
    told = [i for i, line in enumerate(lines) if "2/2 done" in line]
    assert len(trained) == 2 and told and max(trained) < min(told), lines


def test_a_trial_whose_worker_dies_is_interrupted_and_runs_again(tmp_path, two_node_cluster):
    """A dead worker is the machine's fault, not the configuration's: after Ray's retries the
    trial is recorded as interrupted, the run stops with exit 2's error, and the next run trains it."""
    from scaling_lab.errors import MachineFault
    from scaling_lab.study.results import is_interrupted
    from tests.helpers import dying_trial

    path = write_study(tmp_path, search_space={"parameters": {"feature_network": ["fpn", "panet"]}}, repeats=1)
    config = load_study(path)
    with pytest.raises(MachineFault, match=r"trial \d: the Ray trial's worker died 3 times; see its logs under .*the next run runs them again"):
        run_study(config, backend="ray", address=two_node_cluster.address, trial_function=dying_trial, out=None)
    trials = optuna.load_study(study_name="tiny", storage=config.storage_url).trials
    assert [t.user_attrs["config_id"] for t in trials if is_interrupted(t)] == [t.user_attrs["config_id"] for t in trials if t.params == {"feature_network": "panet"}]
    frame = run_study(config, backend="ray", address=two_node_cluster.address, trial_function=fake_trial, out=None)
    assert frame.set_index("feature_network")["state"].to_dict() == {"fpn": "complete", "panet": "failed"}
