"""Data-parallel trials: two workers on the CPU (gloo) through Ray Train against one process.

The Ray tests share one local Ray (3 CPUs: two workers and a Tune trial's share) for the module."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace

import optuna
import pytest
import torch
from ray import cloudpickle

from scaling_lab.data import DetectionLoader, synthetic_dataset
from scaling_lab.errors import MachineFault, ScalingLabError
from scaling_lab.study import load_study, run_study
from scaling_lab.study.candidate import torch_threads
from scaling_lab.study.fingerprint import definition
from scaling_lab.study.ray_backend import concurrent_trials
from scaling_lab.train import distributed, trainer
from scaling_lab.train.checkpoint import CHECKPOINT_NAME
from scaling_lab.train.scoring import evaluate_spec
from scaling_lab.trial import Budget, Task, Workers
from tests.helpers import TINY_BACKBONE, TINY_DETECTOR, TINY_SCENES, tiny_task, write_study

# No drop-path: its masks are drawn per image, so two workers draw other masks than one process
# (each worker draws its own, seeded by seed, epoch and rank); everything else is the same.
DETECTOR = TINY_DETECTOR.replace(backbone={**TINY_BACKBONE.to_dict(), "drop_connect": 0.0})
SCENES = {**TINY_SCENES, "val_images": 6}
# The first steps' losses of 2 workers x 4 images and 1 process x 8: the same up to the order of
# floating-point sums (batch-norm statistics from sums over workers, DDP's averaged gradients).
LOSS_TOLERANCE = 1e-4
FAILURE_TIMEOUT_S = 90  # a failing rank ends the trial well within this (Ray Train stops the others)


def global_batch_task(**changes) -> Task:
    """The tiny task on ``SCENES`` at a global batch of 8."""
    return tiny_task(SCENES, **{"batch_size": 8, **changes})


def shard_batches(dataset, batch_size: int, train: bool, workers: int) -> list[list]:
    loaders = [DetectionLoader(dataset, 64, batch_size, train=train, seed=3, shard=(rank, workers)) for rank in range(workers)]
    return [list(loader) for loader in loaders]


def test_workers_split_the_same_global_order_and_augment_each_image_as_one_process_does():
    dataset = synthetic_dataset("train", **SCENES)
    (whole,), (first, second) = shard_batches(dataset, 8, True, 1), shard_batches(dataset, 8, True, 2)
    assert len(whole) == len(first) == len(second) == 1
    for one, mine, theirs in zip(whole, first, second):
        assert one.image_ids[0::2] == mine.image_ids and one.image_ids[1::2] == theirs.image_ids
        assert torch.equal(one.images[0::2], mine.images) and torch.equal(one.images[1::2], theirs.images)
        assert torch.equal(one.scales[1::2], theirs.scales)


def test_validation_shards_hold_every_image_once_even_when_the_last_batch_is_short():
    dataset = synthetic_dataset("val", **SCENES)  # 6 images in batches of 4: the last holds 2
    ids = [image_id for shard in shard_batches(dataset, 4, False, 4) for batch in shard for image_id in batch.image_ids]
    assert sorted(ids) == sorted(dataset.image_ids)


def test_a_global_batch_that_does_not_split_evenly_is_a_clear_error():
    dataset = synthetic_dataset("train", **SCENES)
    with pytest.raises(ScalingLabError, match="global batch of 6 cannot be split evenly among 4 workers over 8 training images"):
        DetectionLoader(dataset, 64, 6, train=True, shard=(0, 4))
    with pytest.raises(ScalingLabError, match="global batch of 6 cannot be split evenly among 4 workers; use a batch size that is a multiple of 4"):
        trainer.run_trial(DETECTOR, global_batch_task(batch_size=6), Budget(epochs=1), workers=Workers(4))  # before any worker starts


def test_workers_are_a_resource_not_part_of_the_study_definition(tmp_path):
    one = load_study(write_study(tmp_path))
    four = load_study(write_study(tmp_path, resources={"workers": 4, "cpus_per_worker": 2, "gpus_per_worker": 1}))
    assert four.resources.trial_workers == Workers(4, 2, 1) and definition(one) == definition(four)
    for resources, words in [
        ({"workers": 0}, "resources.workers 0: expected a whole number of at least 1"),
        ({"workers": 3}, "task batch_size is the global batch: the global batch of 8 cannot be split evenly among 3 workers"),
        ({"workers": 2, "gpus": "auto"}, "gpus_per_worker"),
        ({"workers": 2, "cpus_per_worker": 0}, "cpus_per_worker 0: expected a positive number"),
    ]:
        with pytest.raises(ScalingLabError, match=words):
            load_study(write_study(tmp_path, resources=resources))


def test_tune_runs_no_more_data_parallel_trials_at_once_than_the_cluster_holds_the_workers_of(tmp_path):
    cpu_study = load_study(write_study(tmp_path, resources={"workers": 2, "cpus_per_worker": 2}))
    assert concurrent_trials(cpu_study, {"CPU": 9}) == 2
    gpu_study = load_study(write_study(tmp_path, resources={"workers": 8, "gpus_per_worker": 1, "cpus_per_worker": 8}))
    assert concurrent_trials(gpu_study, {"CPU": 128, "GPU": 8}) == 1  # two 4-GPU nodes: one 8-worker trial at a time
    assert concurrent_trials(load_study(write_study(tmp_path)), {"CPU": 2}) is None  # one-process trials: Tune's own limit
    with pytest.raises(ScalingLabError, match="need 64 CPUs and 8 GPUs; the Ray cluster has 128 CPUs and 4 GPUs"):
        concurrent_trials(gpu_study, {"CPU": 128, "GPU": 4})


def test_a_failed_data_parallel_trial_raises_the_failing_rank_s_own_error():
    from ray.train import WorkerGroupError

    diverged = trainer.TrainingDiverged("training diverged: the loss became nan in epoch 1")
    assert distributed.worker_failure(WorkerGroupError("", {1: diverged, 0: diverged}), 2) is diverged
    lost = distributed.worker_failure(WorkerGroupError("", {1: RuntimeError("CUDA error: device lost")}), 4)
    assert isinstance(lost, distributed.WorkerFailed) and str(lost) == "worker 1 of 4 failed: RuntimeError: CUDA error: device lost"


# --------------------------------------------------------------------------------------------
# Two workers through Ray Train


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_of_four_take_the_steps_of_one_process_of_eight(local_ray):
    budget = Budget(epochs=3)  # 8 images, batch 8: one step per epoch
    with torch_threads(Workers(2).cpus_per_worker):  # each worker's thread count: the same float sums
        one = trainer.run_trial(DETECTOR, global_batch_task(), budget, device="cpu")
    two = trainer.run_trial(DETECTOR, global_batch_task(), budget, device="cpu", workers=Workers(2))
    assert [e["train_loss"] for e in two.curve] == pytest.approx([e["train_loss"] for e in one.curve], rel=LOSS_TOLERANCE)
    assert abs(two.metrics["AP"] - one.metrics["AP"]) <= 0.01 * max(one.metrics["AP"], 0.01) + 1e-3
    assert two.notes == ["trained data-parallel on 2 workers (global batch 8, 4 per worker)"]


class Pruned(Exception):
    pass


@pytest.mark.slow
def test_a_stopped_trial_ends_on_every_worker_and_its_checkpoint_serves_evaluate_and_a_one_process_resume(local_ray, tmp_path):
    task, budget, reports = global_batch_task(), Budget(epochs=2), []

    def prune_after_first(epoch, metrics):
        reports.append((epoch, metrics))
        raise Pruned  # what the study's pruner or Tune's scheduler does

    with pytest.raises(Pruned):
        trainer.run_trial(DETECTOR, task, budget, checkpoint_dir=tmp_path, device="cpu", workers=Workers(2), report=prune_after_first)
    assert [epoch for epoch, _ in reports] == [1]
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1 and not any(key.startswith("module.") for key in saved["model"])

    # The validation the two workers shared is the one of one process on the same weights.
    with torch_threads(Workers(2).cpus_per_worker):  # each worker's thread count: the same float sums
        evaluated = evaluate_spec(DETECTOR, replace(task, init=str(tmp_path / CHECKPOINT_NAME)), budget, device="cpu")
    shared = {name: value for name, value in reports[0][1].items() if name not in ("epoch", "train_loss")}
    assert evaluated["metrics"] == pytest.approx(shared, nan_ok=True)

    resumed = trainer.run_trial(DETECTOR, task, budget, checkpoint_dir=tmp_path, device="cpu")
    assert resumed.notes == [f"resumed from {tmp_path / CHECKPOINT_NAME} after epoch 1"]
    assert [entry["epoch"] for entry in resumed.curve] == [1, 2]


def train_failing_on_rank_1(replicas, **arguments):
    """``train``, except that rank 1 raises in the second step of its first epoch."""
    if replicas.rank == 1:
        original, steps = trainer.DetectionObjective.loss, []

        def failing(self, model, batch, channels_last):
            steps.append(1)
            if len(steps) == 2:
                raise RuntimeError("rank 1 lost its device (simulated)")
            return original(self, model, batch, channels_last)

        trainer.DetectionObjective.loss = failing  # in this worker's process only
    return trainer.train(replicas=replicas, **arguments)


@pytest.mark.slow
def test_a_rank_failing_mid_epoch_ends_the_trial_with_its_reason_without_a_hang(local_ray, tmp_path):
    task = global_batch_task(synthetic=tuple(sorted({**SCENES, "train_images": 16}.items())))  # two steps per epoch
    arguments = dict(spec=DETECTOR, task=task, budget=Budget(epochs=2), seed=0, checkpoint_dir=None, progress=False)
    started = time.monotonic()
    with pytest.raises(distributed.WorkerFailed, match="worker 1 of 2 failed: RuntimeError: rank 1 lost its device"):
        distributed.run_on_workers(train_failing_on_rank_1, arguments, Workers(2), report=None)
    assert time.monotonic() - started < FAILURE_TIMEOUT_S


def train_killed_on_rank_1(replicas, **arguments):
    """``train``, except that rank 1's process is killed (SIGKILL, as the out-of-memory killer or a
    lost machine ends it) in the second step of its first epoch."""
    if replicas.rank == 1:
        original, steps = trainer.DetectionObjective.loss, []

        def killed(self, model, batch, channels_last):
            steps.append(1)
            if len(steps) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, model, batch, channels_last)

        trainer.DetectionObjective.loss = killed
    return trainer.train(replicas=replicas, **arguments)


@pytest.mark.slow
def test_a_rank_whose_process_dies_interrupts_the_trial_as_a_machine_fault(local_ray, tmp_path):
    task = global_batch_task(synthetic=tuple(sorted({**SCENES, "train_images": 16}.items())))
    arguments = dict(spec=DETECTOR, task=task, budget=Budget(epochs=2), seed=0, checkpoint_dir=None, progress=False)
    started = time.monotonic()
    with pytest.raises(MachineFault, match="worker 1 of 2 was lost") as lost:
        distributed.run_on_workers(train_killed_on_rank_1, arguments, Workers(2), report=None)
    assert isinstance(lost.value, distributed.WorkerLost)
    assert time.monotonic() - started < FAILURE_TIMEOUT_S


def two_worker_study(tmp_path, channels: list[int], epochs: int = 1, **changes):
    return load_study(write_study(
        tmp_path,
        base=DETECTOR.to_dict(),
        search_space={"parameters": {"channels": channels}},
        task={"synthetic": SCENES, "batch_size": 8, "lr": 0.02, "epochs": epochs, "latency": False},
        resources={"workers": 2},
        repeats=1,
        **changes,
    ))


@pytest.mark.slow
def test_a_local_study_of_two_worker_trials_records_each_as_one_trial(local_ray, tmp_path):
    config = two_worker_study(tmp_path, [16])
    frame = run_study(config, backend="local", out=None)
    assert frame["state"].tolist() == ["complete"], frame["error"].tolist()
    trials = optuna.load_study(study_name="tiny", storage=config.storage_url).trials
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_a_ray_study_stops_two_worker_trials_by_asha_and_releases_their_workers(local_ray, tmp_path):
    """Tune ends a stopped trial's process without waiting for its Ray Train workers; their
    placement group is released all the same (else the next trials would wait for ever)."""
    import ray

    config = two_worker_study(
        tmp_path, [24, 8], epochs=2, early_stopping={"type": "asha", "min_epochs": 1, "reduction_factor": 2},
    )
    frame = run_study(config, backend="ray", out=None)
    assert frame["state"].tolist() == ["complete", "pruned"], frame["error"].tolist()
    assert len(optuna.load_study(study_name="tiny", storage=config.storage_url).trials) == 2
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 3
