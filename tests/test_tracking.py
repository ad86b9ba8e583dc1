"""Trials' curves where users look for them: TensorBoard event files read back with TensorBoard's
own reader, and MLflow runs read back with MLflow's client, checked against the trial's record."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from scaling_lab.errors import ScalingLabError
from scaling_lab.study import load_study, run_study
from scaling_lab.train.loop import Training
from scaling_lab.train.mlflow_runs import MlflowTarget, study_run
from scaling_lab.train.optimization import warmup_cosine
from scaling_lab.train.tracking import TrialTracking
from scaling_lab.train.trainer import run_trial
from scaling_lab.trial import Budget, curve_metrics
from tests.helpers import TINY_DETECTOR, TINY_STUDY_TASK, read_scalars, tiny_task, write_study

HPARAMS = "_hparams_/session_start_info"


def read_hparams(logdir: Path) -> list[plugin_data_pb2.SessionStartInfo]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    if HPARAMS not in events.Tags()["tensors"]:
        return []
    content = events.SummaryMetadata(HPARAMS).plugin_data.content
    return [plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info] * len(events.Tensors(HPARAMS))


def same(values: list[float], expected: list[float]) -> bool:
    """Equal as TensorBoard stores scalars (float32); NaN equals NaN."""
    return len(values) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-7) for a, b in zip(values, expected)
    )


def killed_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking: TrialTracking):
    """A trial of two epochs, killed while validating epoch 2 (after epoch 2's training points
    were written, before its checkpoint), then run again to its end; its result."""
    task, budget = tiny_task(), Budget(epochs=2)
    validate = Training.validate
    calls = []

    def dies_in_epoch_two(self, loader):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill: nothing after this point is saved
        return validate(self, loader)

    with monkeypatch.context() as patch:
        patch.setattr(Training, "validate", dies_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            run_trial(TINY_DETECTOR, task, budget, checkpoint_dir=tmp_path / "checkpoint", tracking=tracking)
    assert [step for step, _ in read_scalars(tracking.logdir)["train/loss"]] == [2, 4]  # epoch 2's point, past the checkpoint
    return run_trial(TINY_DETECTOR, task, budget, checkpoint_dir=tmp_path / "checkpoint", tracking=tracking)


def test_a_trial_killed_after_its_checkpoint_and_resumed_writes_each_point_once(tmp_path, monkeypatch):
    tracking = TrialTracking(tmp_path / "curves", {"channels": 16, "seed": 0, "feature_network": "bifpn"}, "abc")
    result = killed_and_resumed(tmp_path, monkeypatch, tracking)
    assert [point["epoch"] for point in result.curve] == [1, 2]
    assert len(list(tracking.logdir.glob("events.out.tfevents.*"))) == 1
    scalars = read_scalars(tracking.logdir)

    # two steps an epoch (8 images, batch 4): one logging point at each epoch's end, where the
    # mean of the steps since the last point is the epoch's mean loss
    steps = [2, 4]
    assert {tag: [step for step, _ in points] for tag, points in scalars.items()} == {
        tag: steps for tag in ["train/loss", "train/lr", "epoch", "train/epoch_loss"] + [f"val/{name}" for name in result.metrics]
    }
    values = {tag: [value for _, value in points] for tag, points in scalars.items()}
    assert values["epoch"] == [1, 2]
    assert same(values["train/loss"], [point["train_loss"] for point in result.curve])
    assert same(values["train/epoch_loss"], [point["train_loss"] for point in result.curve])
    schedule = warmup_cosine(2, 4)  # one warm-up epoch of two
    assert same(values["train/lr"], [0.02 * schedule(step - 1) for step in steps])
    for name in result.metrics:
        assert same(values[f"val/{name}"], [curve_metrics(point)[name] for point in result.curve]), name

    [hparams] = read_hparams(tracking.logdir)  # once, at the end
    assert hparams.group_name == "abc"
    assert {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for name, value in hparams.hparams.items()} == {
        "channels": 16.0, "seed": 0.0, "feature_network": "bifpn",
    }


def test_mlflow_trial_runs_nest_under_the_study_run_and_a_resume_logs_each_epoch_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = study_run(uri, "tiny", None, "name: tiny\n", (tmp_path / "artifacts").as_uri())
    assert study_run(uri, "tiny", parent, "name: tiny\n", None) == parent  # kept while the store has it
    target = MlflowTarget(uri, parent, "abc-seed0")
    tracking = TrialTracking(tmp_path / "curves", {"channels": 16, "seed": 0}, "abc", target)
    result = killed_and_resumed(tmp_path, monkeypatch, tracking)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    [study] = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'tiny'")
    assert study.info.run_id == parent and client.list_artifacts(parent)[0].path == "study.yaml"
    [trial] = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert trial.info.run_name == "abc-seed0" and trial.info.status == "FINISHED"
    assert trial.data.params == {"channels": "16", "seed": "0"}
    assert trial.data.tags["checkpoint"] == str(tmp_path / "checkpoint" / "checkpoint.pt")
    assert [artifact.path for artifact in client.list_artifacts(trial.info.run_id)] == ["spec.json"]
    for name in ["train_loss", *result.metrics]:
        history = client.get_metric_history(trial.info.run_id, name)
        assert [metric.step for metric in history] == [1, 2], name
        assert same([metric.value for metric in history], [point[name] for point in result.curve]), name


def test_study_trials_write_tensorboard_runs_and_mlflow_runs_named_by_group_configuration_and_seed(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    path = write_study(
        tmp_path, search_space=None, groups=[{"name": "wide", "search_space": {"parameters": {"channels": [24]}}}], repeats=2, tracking="mlflow",
        task=TINY_STUDY_TASK,
    )
    config = load_study(path)
    frame = run_study(config, out=None)
    assert frame["state"].tolist() == ["complete", "complete"]
    client = MlflowClient(config.mlflow_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    for _, row in frame.iterrows():
        name = f"wide/{row['config_id']}-seed{row['seed']}"
        scalars = read_scalars(config.run_dir / "tensorboard" / name)
        assert scalars["val/AP"] == [(2, pytest.approx(row["AP"], rel=1e-6))]
        assert runs[name].data.params == {"channels": "24", "seed": str(row["seed"]), "group": "wide"}
        assert runs[name].data.metrics["AP"] == pytest.approx(row["AP"])
        assert runs[name].data.tags["mlflow.parentRunId"] == runs["tiny"].info.run_id
    assert runs["tiny"].info.status == "FINISHED" and len(runs) == 3
    run_study(config, out=None)  # resumed (nothing left to run): the same study run, no new ones
    assert len(client.search_runs([experiment.experiment_id])) == 3


@pytest.mark.parametrize(
    "tracking, fragment",
    [
        ("wandb", r"tracking.kind: 'wandb' is not valid; valid values are tensorboard, mlflow"),
        ({"kind": "mlflow", "url": "x"}, r"tracking: unknown key\(s\) 'url'; valid keys are kind, uri"),
        ({"kind": "mlflow", "uri": 5}, r"tracking.uri: expected an MLflow tracking URI"),
        ({"uri": "http://host:5000"}, r"tracking.uri: is MLflow's tracking URI; set tracking.kind: mlflow"),
    ],
)
def test_bad_tracking_names_file_key_and_valid_values(tmp_path, tracking, fragment):
    path = write_study(tmp_path, tracking=tracking)
    with pytest.raises(ScalingLabError, match=f"{path}: {fragment}"):
        load_study(path)
