"""``run_trial``: train one spec on one task within a budget and return its ``TrialResult``.

Detection trains a ``DetectorSpec`` with the official EfficientDet loss on COCO-format data;
classification trains a ``BackboneSpec`` with cross-entropy on class folders. Both validate
every ``budget.eval_every`` epochs and at the end.

Determinism: python, numpy and torch are seeded from ``seed`` and the loaders draw their order
and augmentation from (seed, epoch), so on the CPU a seed gives the same run for a given library
version, interrupted and resumed or not (the checkpoint carries the RNG states), up to one
measured limit: oneDNN's convolutions can round differently after other work in the same process
(e.g. a latency timing that took another attempt), so a trial that must repeat to the bit should
train where no such work ran before it: the ``ray`` backend's workers come closest (README,
reproducibility). CUDA runs are seeded the same way but some CUDA kernels (scatter, atomics in
backward) are not bit-exact.

With ``workers`` above one the trial is data-parallel (``scaling_lab.train.distributed``): every
worker runs ``train`` on its share of each global batch, with batch norms and the loss's
normalizer over the global batch, so the steps are those of one process on the global batch up
to floating-point summation order.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scaling_lab.data.selection import limit_images, load_datasets, make_loader, skipped_data_notes
from scaling_lab.errors import ScalingLabError
from scaling_lab.latency import measure_latency, resolve_device
from scaling_lab.measure import measure
from scaling_lab.models import build_model
from scaling_lab.schema import library_versions
from scaling_lab.spec import BackboneSpec, DetectorSpec, Spec
from scaling_lab.train.anchors import anchors_for_spec, flatten_levels, match_anchors
from scaling_lab.train.checkpoint import CHECKPOINT_NAME, Progress, load_checkpoint, save_checkpoint, trial_fingerprint
from scaling_lab.train.distributed import run_on_workers
from scaling_lab.train.evaluate import evaluate_classifier, evaluate_detector, split_bootstrap
from scaling_lab.train.finetune import initialize
from scaling_lab.train.loop import Training, TrainingDiverged, divergence
from scaling_lab.train.losses import detection_loss
from scaling_lab.train.optimization import WeightAverage, fit_batch_norm_momentum, make_optimizer, seed_everything, warmup_cosine, worker_seed
from scaling_lab.train.precision import Precision, precision_for
from scaling_lab.train.replicas import ONE_PROCESS, Replicas
from scaling_lab.train.tracking import TrialTracking, TrialWriter
from scaling_lab.trial import Budget, ReportCallback, Task, TrialResult, Workers, batch_split_problem, curve_metrics

log = logging.getLogger(__name__)
ONE_WORKER = Workers()

__all__ = ["CHECKPOINT_NAME", "TrainingDiverged", "divergence", "make_optimizer", "run_trial", "train"]


# --------------------------------------------------------------------------------------------
# What is trained: the loss of a batch and the validation metrics, per task kind


class DetectionObjective:
    def __init__(self, spec: DetectorSpec, device: torch.device, replicas: Replicas = ONE_PROCESS):
        self.anchors = anchors_for_spec(spec, device)
        self.num_classes = spec.num_classes
        self.replicas = replicas

    def loss(self, model: nn.Module, batch, channels_last: bool) -> torch.Tensor:
        images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        class_logits, box_deltas = flatten_levels(*model(images), self.num_classes)
        targets = match_anchors(self.anchors, batch.boxes, batch.labels)
        if self.replicas.count == 1:
            return detection_loss(class_logits, box_deltas, targets).total
        # Normalized by the global batch's positives and scaled so that the workers' averaged
        # gradients are the global batch's.
        positives = self.replicas.sum(targets.positive.sum())
        return detection_loss(class_logits, box_deltas, targets, positives=positives).total * self.replicas.count

    def evaluate(self, model: nn.Module, loader, precision: Precision) -> dict[str, float]:
        return evaluate_detector(model, loader, self.anchors, precision, self.replicas)


class ClassificationObjective:
    def __init__(self, replicas: Replicas = ONE_PROCESS):
        self.replicas = replicas

    def loss(self, model: nn.Module, batch, channels_last: bool) -> torch.Tensor:
        images, labels = batch
        images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        return F.cross_entropy(model(images).float(), labels)  # equal shares: the mean of means is the global mean

    def evaluate(self, model: nn.Module, loader, precision: Precision) -> dict[str, float]:
        return evaluate_classifier(model, loader, precision, self.replicas)


def objective_for(spec: Spec, task: Task, device: torch.device, replicas: Replicas = ONE_PROCESS) -> DetectionObjective | ClassificationObjective:
    return DetectionObjective(spec, device, replicas) if task.kind == "detection" else ClassificationObjective(replicas)


def adapt_spec(spec: Spec, task: Task, dataset_classes: int, notes: list[str]) -> Spec:
    """The spec with the data's class count (noted), or an error when the task does not adapt."""
    if spec.num_classes == dataset_classes:
        return spec
    if not task.adapt_num_classes:
        raise ScalingLabError(
            f"spec num_classes {spec.num_classes} does not match the {dataset_classes} classes of the data "
            f"{task.data!r}; set num_classes={dataset_classes} in the spec or task adapt_num_classes=true"
        )
    adapted = spec.replace(num_classes=dataset_classes)
    note = (
        f"spec num_classes {spec.num_classes} replaced by the dataset's {dataset_classes} "
        f"(trained spec hash {adapted.spec_hash})"
    )
    log.warning(note)
    notes.append(note)
    return adapted


def start_training(
    spec: Spec, task: Task, precision: Precision, steps_per_epoch: int, epochs: int, seed: int, replicas: Replicas = ONE_PROCESS
) -> tuple[Training, str | None]:
    """The seeded model (with the task's init weights, on the device) and its optimizer, schedule
    and weight average; with the init note for the trial's result."""
    seed_everything(seed)
    model = build_model(spec)
    init_note = initialize(model, spec, task)
    model = replicas.prepare(precision.place(model))
    fit_batch_norm_momentum(model, epochs * steps_per_epoch)
    average = WeightAverage(model, task.ema) if task.ema > 0 else None
    optimizer = make_optimizer(model, task)
    schedule = warmup_cosine(round(task.warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step_model = replicas.wrap(model)
    step_model = torch.compile(step_model) if task.compile else step_model
    objective = objective_for(spec, task, precision.device, replicas)
    return Training(model, step_model, optimizer, scheduler, average, objective, precision, task, replicas), init_note


# --------------------------------------------------------------------------------------------
# The trial


@dataclass
class Trained:
    """What training leaves for the trial's result (rank 0's, with workers)."""

    spec: Spec  # as trained: num_classes from the data
    progress: Progress
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def _versions(device: torch.device) -> dict[str, str]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu:{platform.machine()}"
    return {**library_versions(), "device": device_name}


def train(
    spec: Spec,
    task: Task,
    budget: Budget,
    report: ReportCallback | None,
    seed: int,
    checkpoint_dir: str | Path | None,
    device: torch.device,
    progress: bool,
    replicas: Replicas = ONE_PROCESS,
    tracking: TrialTracking | None = None,
) -> Trained:
    """Train and validate (this worker's share of) the trial; see ``run_trial``."""
    started = time.perf_counter()
    notes: list[str] = []
    train_set, val_set = load_datasets(task)
    notes += skipped_data_notes(train_set, val_set)
    train_spec = adapt_spec(spec, task, train_set.num_classes, notes)
    train_set, val_set = limit_images(train_set, budget.max_train_images), limit_images(val_set, budget.max_val_images)
    precision = precision_for(task, device)
    shard = (replicas.rank, replicas.count)
    train_loader = make_loader(task, train_set, train_spec.resolution, train=True, seed=seed, device=device, shard=shard)
    val_loader = make_loader(task, val_set, train_spec.resolution, train=False, seed=seed, device=device, shard=shard)
    steps_per_epoch = len(train_loader)
    training, init_note = start_training(train_spec, task, precision, steps_per_epoch, budget.epochs, seed, replicas)
    if init_note:
        notes.append(init_note)

    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    fingerprint = trial_fingerprint(spec, task, budget, seed)
    state = Progress()
    saved = load_checkpoint(checkpoint, fingerprint, notes) if checkpoint is not None else None
    if saved is not None:
        state = training.restore(saved)
        notes.append(f"resumed from {checkpoint} after epoch {state.epoch}")
    previous_wall_time = state.wall_time_s
    writer = TrialWriter(tracking, state, steps_per_epoch, train_spec, checkpoint) if tracking is not None and replicas.is_main else None

    bar = tqdm(
        total=budget.epochs * steps_per_epoch,
        initial=state.epoch * steps_per_epoch,
        desc=f"train {spec.spec_hash[:8]}",
        unit="step",
        file=sys.stderr,
        disable=not (progress and replicas.is_main),
        dynamic_ncols=True,
    )
    try:
        for epoch in range(state.epoch, budget.epochs):
            if replicas.count > 1:  # each worker its own dropout and drop-path draws, the same after a resume
                seed_everything(worker_seed(seed, epoch, replicas.rank))
            mean_loss = training.train_epoch(train_loader, epoch, state, bar, f"spec {spec.spec_hash} with lr {task.peak_lr}", writer)
            completed = epoch + 1
            evaluated = completed % budget.eval_every == 0 or completed == budget.epochs
            if evaluated:
                metrics, state.bootstrap = split_bootstrap(training.validate(val_loader))
                state.curve.append({"epoch": completed, "train_loss": mean_loss, **metrics})
                if progress and replicas.is_main:
                    bar.write(f"epoch {completed}: " + ", ".join(f"{k} {v:.4f}" for k, v in state.curve[-1].items() if k != "epoch"), file=sys.stderr)
            state.epoch = completed
            state.wall_time_s = previous_wall_time + time.perf_counter() - started
            if checkpoint is not None and replicas.is_main:
                save_checkpoint(checkpoint, training.checkpoint(fingerprint, state))
            if evaluated and writer is not None:
                writer.epoch(state.curve[-1], state.steps[-1]["time"])
            if evaluated and report is not None:
                report(completed, dict(state.curve[-1]))
        if writer is not None:
            writer.finish(state.curve[-1])
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return Trained(train_spec, state, notes, _versions(device))


def run_trial(
    spec: Spec,
    task: Task,
    budget: Budget,
    report: ReportCallback | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    workers: Workers = ONE_WORKER,
    tracking: TrialTracking | None = None,
) -> TrialResult:
    """Train ``spec`` on ``task`` for ``budget`` and return the final metrics and measurements.

    ``report(epoch, metrics)`` is called after every validation, after that epoch's checkpoint
    is saved; whatever it raises (e.g. ``optuna.TrialPruned``) propagates (with workers, after
    every worker has stopped). With ``checkpoint_dir``, a checkpoint is written at every epoch
    end and a run finds and resumes its own checkpoint there (whatever the worker count).
    ``progress`` shows a tqdm bar on stderr. ``workers`` above one trains data-parallel through
    Ray Train (a local Ray is started when none is running). ``tracking`` writes the trial's
    curves (TensorBoard, and MLflow when it names a run; see ``scaling_lab.train.tracking``).
    """
    expected = DetectorSpec if task.kind == "detection" else BackboneSpec
    if not isinstance(spec, expected):
        raise ScalingLabError(
            f"a {task.kind} task trains a {expected.kind} spec, got a {type(spec).kind} spec "
            f"(use an efficientdet-* preset for detection, efficientnet-* for classification)"
        )
    device = resolve_device(device)
    split_problem = batch_split_problem(task.batch_size, workers.count)
    if split_problem:
        raise ScalingLabError(split_problem)
    arguments = {"spec": spec, "task": task, "budget": budget, "seed": seed, "checkpoint_dir": checkpoint_dir, "progress": progress, "tracking": tracking}
    if workers.count == 1:
        trained = train(report=report, device=device, **arguments)
    else:
        trained = run_on_workers(train, arguments, workers, report)
        share = task.batch_size // workers.count
        trained.notes.append(f"trained data-parallel on {workers.count} workers (global batch {task.batch_size}, {share} per worker)")
    measuring_started = time.perf_counter()
    final = trained.progress.curve[-1]
    measured = measure(trained.spec)
    latency_ms = None
    if task.latency:
        precision = precision_for(task, device)
        latency_ms = measure_latency(trained.spec, 1, str(device), precision.dtype_name).batch1_ms  # None when unstable
    return TrialResult(
        spec_hash=spec.spec_hash,
        seed=seed,
        metrics=curve_metrics(final),
        params=measured.params,
        flops=measured.flops,
        flops_elementwise=measured.flops_elementwise,
        activations=measured.activations,
        latency_ms=latency_ms,
        wall_time_s=trained.progress.wall_time_s + time.perf_counter() - measuring_started,
        curve=trained.progress.curve,
        bootstrap=trained.progress.bootstrap,
        versions=trained.versions,
        notes=trained.notes,
    )
