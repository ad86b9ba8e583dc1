"""``run_trial``: train one spec on one task within a budget and return its ``TrialResult``.

Detection trains a ``DetectorSpec`` with the official EfficientDet loss on COCO-format data;
classification trains a ``BackboneSpec`` with cross-entropy on class folders. Both validate
every ``budget.eval_every`` epochs and at the end.

Determinism: python, numpy and torch are seeded from ``seed`` and the loaders draw their order
and augmentation from (seed, epoch), so on the CPU a seed gives the same run for a given library
version, interrupted and resumed or not (the checkpoint carries the RNG states). CUDA runs are
seeded the same way but some CUDA kernels (scatter, atomics in backward) are not bit-exact.

A budget's ``max_train_images`` / ``max_val_images`` take evenly spaced images of the split
(the same ones for every seed and trial, and every class of a class-sorted folder).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scaling_lab.errors import ScalingLabError
from scaling_lab.files import atomic_write
from scaling_lab.latency import measure_latency, resolve_device
from scaling_lab.measure import measure
from scaling_lab.models import build_model
from scaling_lab.schema import library_versions
from scaling_lab.spec import BackboneSpec, DetectorSpec, Spec
from scaling_lab.train.anchors import anchors_for_spec, flatten_levels, match_anchors
from scaling_lab.train.evaluate import evaluate_classifier, evaluate_detector
from scaling_lab.train.finetune import initialize, parameter_groups, train_mode
from scaling_lab.train.losses import detection_loss
from scaling_lab.trial import Budget, ReportCallback, Task, TrialResult

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
WARMUP_START_FRACTION = 0.1  # the official warm-up starts at lr / 10
SGD_MOMENTUM = 0.9
# The official batch-norm momentum (0.01: running statistics over the last few hundred steps)
# suits runs of 100k+ steps; a short trial's statistics would still mostly be the initial ones at
# validation. A trial of S steps uses max(0.01, min(0.1, BN_STEPS_SCALE / S)) instead.
BN_STEPS_SCALE = 20
MAX_BN_MOMENTUM = 0.1
# The loss is checked for NaN/inf every this many steps (and at each epoch end) rather than at
# every step, which would stop the GPU once per step to read it.
LOSS_CHECK_INTERVAL = 20
# A trial has diverged when its mean training loss (at those checks) is NaN or infinite, or more
# than DIVERGENCE_FACTOR times the loss of its first step (the model as initialised). Healthy
# training lowers the loss; a learning rate far too high (``--lr 1e6``) multiplies it by 1e10 or
# more within an epoch, while noise between batches stays within a factor of a few.
DIVERGENCE_FACTOR = 1e3


class TrainingDiverged(ScalingLabError):
    """The loss became NaN, infinite or exploded (``divergence``); a study records the trial as failed."""


def divergence(mean_loss: float, initial_loss: float | None) -> str | None:
    """Why a loss means the trial diverged (see ``DIVERGENCE_FACTOR``), or None."""
    if not math.isfinite(mean_loss):
        return f"the loss became {mean_loss}"
    if initial_loss is not None and initial_loss > 0 and mean_loss > DIVERGENCE_FACTOR * initial_loss:
        return f"the loss reached {mean_loss:.4g}, over {DIVERGENCE_FACTOR:g} times its first step's {initial_loss:.4g}"
    return None


# --------------------------------------------------------------------------------------------
# Data


class ImageSubset:
    """Some images of a dataset (``CocoDetection`` or ``ImageFolderClassification``), usable
    wherever the dataset is: the loaders need its ``image_store``, ``targets``/``labels`` and
    ``image_ids``; everything else (``coco``, ``coco_results``, class names) is the dataset's."""

    def __init__(self, dataset, indices: list[int]):
        from scaling_lab.data.store import ImageStore

        self._dataset = dataset
        self._indices = indices
        store = dataset.image_store
        sizes = store.expected_sizes
        self.image_store = ImageStore(
            [store.paths[i] for i in indices], [sizes[i] for i in indices] if sizes is not None else None, store.memory_budget_bytes
        )
        if hasattr(dataset, "image_ids"):
            self.image_ids = [dataset.image_ids[i] for i in indices]
        if hasattr(dataset, "labels"):
            self.labels = dataset.labels[indices]

    def __len__(self) -> int:
        return len(self._indices)

    def targets(self, index: int):
        return self._dataset.targets(self._indices[index])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def limit_images(dataset, count: int | None):
    """The dataset itself, or ``count`` evenly spaced images of it when it has more."""
    if count is None or count >= len(dataset):
        return dataset
    return ImageSubset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


def skipped_data_notes(train_set: Any, val_set: Any) -> list[str]:
    """The trial's data summary of what ``task.bad_data: skip`` left out, one note per split."""
    notes = []
    for split, dataset in (("train", train_set), ("val", val_set)):
        images, annotations = getattr(dataset, "images_skipped", 0), getattr(dataset, "annotations_skipped", 0)
        stats = getattr(dataset, "stats", None)
        if stats is not None:
            images, annotations = stats.images_skipped, stats.annotations_skipped + stats.degenerate_dropped
        if images or annotations:
            notes.append(f"{split} data: skipped {images} unusable image(s) and {annotations} unusable annotation(s) (task bad_data: skip)")
    return notes


def _check_path(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise ScalingLabError(f"{what} {path} does not exist; {hint}")
    return path


def load_split(task: Task, split: str):
    """The ``split`` (train or val) dataset a task names (see ``Task`` for the folder layouts)."""
    from scaling_lab.data import CocoDetection, ImageFolderClassification, synthetic_classification, synthetic_dataset

    knobs = dict(task.synthetic)
    if task.data == "synthetic":
        make = synthetic_dataset if task.kind == "detection" else synthetic_classification
        return make(split, **knobs)
    if knobs:
        raise ScalingLabError(f"task synthetic knobs {knobs} are only valid with data 'synthetic', not {task.data!r}")
    root = Path(task.data)
    layout = "expected train/ and val/ folders, or 'synthetic'"
    _check_path(root, "task data folder", layout)
    if task.kind == "classification":
        return ImageFolderClassification(_check_path(root / split, "classification split", layout), bad_data=task.bad_data)
    images = getattr(task, f"{split}_images") or root / split / "images"
    annotations = getattr(task, f"{split}_annotations") or root / split / "annotations.json"
    hint = f"set task {split}_images/{split}_annotations or use the layout <data>/{split}/images + <data>/{split}/annotations.json"
    dataset = CocoDetection(_check_path(Path(images), "images folder", hint), _check_path(Path(annotations), "annotation file", hint), labels=task.labels, bad_data=task.bad_data)
    if split == "val" and dataset.stats.boxes == 0:
        raise ScalingLabError(
            f"validation annotation file {annotations} holds no boxes to score against ({dataset.stats.images} images, "
            f"{dataset.stats.annotations} annotations, none a usable box), so every AP would be NaN; give a validation split with annotations"
        )
    return dataset


def load_datasets(task: Task) -> tuple[Any, Any]:
    """The (train, val) datasets a task names, checked to hold the same classes."""
    train, val = load_split(task, "train"), load_split(task, "val")
    if task.data == "synthetic":
        return train, val
    if task.kind == "classification":
        if train.class_names != val.class_names:
            raise ScalingLabError(
                f"the train and val folders of {task.data} hold different classes ({train.class_names} vs {val.class_names}); "
                "both splits need the same class sub-folders"
            )
        return train, val
    if train.label_to_category_id != val.label_to_category_id:
        raise ScalingLabError(
            f"the train and val annotation files of {task.data!r} list different categories "
            f"(ids {train.label_to_category_id} vs {val.label_to_category_id}); both splits need the same categories"
        )
    return train, val


# --------------------------------------------------------------------------------------------
# What is trained: the loss of a batch and the validation metrics, per task kind


class DetectionObjective:
    def __init__(self, spec: DetectorSpec, device: torch.device):
        self.anchors = anchors_for_spec(spec, device)
        self.num_classes = spec.num_classes

    def loss(self, model: nn.Module, batch, channels_last: bool) -> torch.Tensor:
        images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        class_logits, box_deltas = flatten_levels(*model(images), self.num_classes)
        targets = match_anchors(self.anchors, batch.boxes, batch.labels)
        return detection_loss(class_logits, box_deltas, targets).total

    def evaluate(self, model: nn.Module, loader, amp_dtype: torch.dtype | None, channels_last: bool) -> dict[str, float]:
        return evaluate_detector(model, loader, self.anchors, amp_dtype, channels_last)


class ClassificationObjective:
    def loss(self, model: nn.Module, batch, channels_last: bool) -> torch.Tensor:
        images, labels = batch
        images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        return F.cross_entropy(model(images).float(), labels)

    def evaluate(self, model: nn.Module, loader, amp_dtype: torch.dtype | None, channels_last: bool) -> dict[str, float]:
        return evaluate_classifier(model, loader, amp_dtype, channels_last)


# --------------------------------------------------------------------------------------------
# Optimization


class WeightAverage:
    """Exponential moving average of a model's weights and buffers. The decay ramps up as
    (1 + n) / (10 + n) over the first updates, so short runs are not dominated by the random
    initialization."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats = [(mine, theirs) for mine, theirs in self._pairs if mine.is_floating_point()]
        torch._foreach_lerp_([mine for mine, _ in floats], [theirs for _, theirs in floats], weight)
        for mine, theirs in self._pairs:
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def fit_batch_norm_momentum(model: nn.Module, total_steps: int) -> None:
    """Raise the batch norms' momentum so their running statistics converge within the trial."""
    momentum = min(MAX_BN_MOMENTUM, BN_STEPS_SCALE / max(1, total_steps))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, momentum)


def make_optimizer(model: nn.Module, task: Task) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW; no weight decay on biases and norm weights (1-D tensors),
    the backbone's learning rate scaled by ``task.backbone_lr_scale``."""
    groups = parameter_groups(model, task)
    if task.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=task.peak_lr, momentum=SGD_MOMENTUM)
    return torch.optim.AdamW(groups, lr=task.peak_lr)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of a step: linear from 0.1 to 1 over the warm-up, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return WARMUP_START_FRACTION + (1 - WARMUP_START_FRACTION) * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# The trial


@dataclass
class _Progress:
    """What a checkpoint carries besides the weights and optimizer states."""

    epoch: int = 0  # epochs completed
    curve: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    initial_loss: float | None = None  # the first step's, the reference of ``divergence``


def _adapt_spec(spec: Spec, task: Task, dataset_classes: int, notes: list[str]) -> Spec:
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


def _fingerprint(spec: Spec, task: Task, budget: Budget, seed: int) -> str:
    """Identifies the trial a checkpoint belongs to (resuming another trial's would be wrong)."""
    text = json.dumps({"spec": spec.to_dict(), "task": asdict(task), "budget": asdict(budget), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact. Written through
    a Python file, so that a full disk is an ``OSError`` (torch's own file writer reports it as
    "unexpected pos") and ``atomic_write`` says so."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)

    atomic_write(path, write)


def _load_checkpoint(path: Path, fingerprint: str, notes: list[str]) -> dict[str, Any] | None:
    """The trial's own checkpoint, or None to start afresh. Checkpoints are written atomically,
    so one that cannot be read was damaged by the machine (a disk error, a copy cut short): it
    is moved aside as ``checkpoint.pt.damaged`` and the trial starts afresh, with a note."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch and pickle raise many kinds for a damaged file
        aside = path.with_name(f"{path.name}.damaged")
        path.replace(aside)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        note = f"checkpoint {path} could not be read ({detail}); moved aside as {aside.name}, the trial started afresh"
        log.warning(note)
        notes.append(note)
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        raise ScalingLabError(
            f"checkpoint {path} belongs to another trial (spec, task, budget or seed differ); "
            "use another checkpoint_dir or delete it"
        )
    return state


def _versions(device: torch.device) -> dict[str, str]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu:{platform.machine()}"
    return {**library_versions(), "device": device_name}


def run_trial(
    spec: Spec,
    task: Task,
    budget: Budget,
    report: ReportCallback | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> TrialResult:
    """Train ``spec`` on ``task`` for ``budget`` and return the final metrics and measurements.

    ``report(epoch, metrics)`` is called after every validation, after that epoch's checkpoint
    is saved; whatever it raises (e.g. ``optuna.TrialPruned``) propagates. With
    ``checkpoint_dir``, a checkpoint is written at every epoch end and a run finds and resumes
    its own checkpoint there. ``progress`` shows a tqdm bar on stderr.
    """
    expected = DetectorSpec if task.kind == "detection" else BackboneSpec
    if not isinstance(spec, expected):
        raise ScalingLabError(
            f"a {task.kind} task trains a {expected.kind} spec, got a {type(spec).kind} spec "
            f"(use an efficientdet-* preset for detection, efficientnet-* for classification)"
        )
    device = resolve_device(device)
    started = time.perf_counter()
    notes: list[str] = []
    train_set, val_set = load_datasets(task)
    notes += skipped_data_notes(train_set, val_set)
    train_spec = _adapt_spec(spec, task, train_set.num_classes, notes)
    train_set, val_set = limit_images(train_set, budget.max_train_images), limit_images(val_set, budget.max_val_images)

    on_cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if (task.bf16 if on_cuda else task.bf16_cpu) else None
    channels_last = on_cuda and task.channels_last
    augmentation = {} if task.augment else {"scale_range": (1.0, 1.0), "flip_probability": 0.0}
    if task.kind == "detection":
        from scaling_lab.data import DetectionLoader as Loader

        objective: DetectionObjective | ClassificationObjective = DetectionObjective(train_spec, device)
    else:
        from scaling_lab.data import ClassificationLoader as Loader

        objective = ClassificationObjective()
    train_loader = Loader(train_set, train_spec.resolution, task.batch_size, train=True, seed=seed, device=device, **augmentation)
    val_loader = Loader(val_set, train_spec.resolution, task.batch_size, train=False, seed=seed, device=device)

    seed_everything(seed)
    model = build_model(train_spec)
    init_note = initialize(model, train_spec, task)
    if init_note:
        notes.append(init_note)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    steps_per_epoch = len(train_loader)
    fit_batch_norm_momentum(model, budget.epochs * steps_per_epoch)
    average = WeightAverage(model, task.ema) if task.ema > 0 else None
    optimizer = make_optimizer(model, task)
    schedule = warmup_cosine(round(task.warmup_epochs * steps_per_epoch), budget.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step_model = torch.compile(model) if task.compile else model

    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    fingerprint = _fingerprint(spec, task, budget, seed)
    state = _Progress()
    saved = _load_checkpoint(checkpoint, fingerprint, notes) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if average is not None:
            average.load_state_dict(saved["ema"])
        _set_rng_state(saved["rng"])
        state = _Progress(**{name: saved[name] for name in ("epoch", "curve", "wall_time_s")}, initial_loss=saved.get("initial_loss"))
        notes.append(f"resumed from {checkpoint} after epoch {state.epoch}")
    previous_wall_time = state.wall_time_s

    bar = tqdm(
        total=budget.epochs * steps_per_epoch,
        initial=state.epoch * steps_per_epoch,
        desc=f"train {spec.spec_hash[:8]}",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(state.epoch, budget.epochs):
            train_loader.set_epoch(epoch)
            train_mode(model, task)
            loss_sum = torch.zeros((), device=device)
            for step, batch in enumerate(train_loader, start=1):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = objective.loss(step_model, batch, channels_last)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if task.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
                optimizer.step()
                scheduler.step()
                if average is not None:
                    average.update()
                loss_sum += loss.detach()
                if state.initial_loss is None:
                    state.initial_loss = loss.item()
                if step % LOSS_CHECK_INTERVAL == 0 or step == steps_per_epoch:
                    mean_loss = loss_sum.item() / step
                    reason = divergence(mean_loss, state.initial_loss)
                    if reason:
                        raise TrainingDiverged(
                            f"training diverged: {reason} in epoch {epoch + 1} (by step {step}) "
                            f"of spec {spec.spec_hash} with lr {task.peak_lr}; lower task lr or set grad_clip"
                        )
                    bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4f}")
                bar.update()
            completed = epoch + 1
            evaluated = completed % budget.eval_every == 0 or completed == budget.epochs
            if evaluated:
                evaluated_model = average.module if average is not None else model
                metrics = objective.evaluate(evaluated_model, val_loader, amp_dtype, channels_last)
                state.curve.append({"epoch": completed, "train_loss": mean_loss, **metrics})
                if progress:
                    bar.write(f"epoch {completed}: " + ", ".join(f"{k} {v:.4f}" for k, v in state.curve[-1].items() if k != "epoch"), file=sys.stderr)
            state.epoch = completed
            state.wall_time_s = previous_wall_time + time.perf_counter() - started
            if checkpoint is not None:
                _save_checkpoint(
                    checkpoint,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "ema": average.state_dict() if average is not None else None,
                        "rng": _rng_state(),
                        **asdict(state),
                    },
                )
            if evaluated and report is not None:
                report(completed, dict(state.curve[-1]))
    finally:
        bar.close()

    final = state.curve[-1]
    measured = measure(train_spec)
    latency_ms = None
    if task.latency:
        dtype = "bfloat16" if amp_dtype is not None else "float32"
        latency_ms = measure_latency(train_spec, 1, str(device), dtype).batch1_ms  # None when unstable
    return TrialResult(
        spec_hash=spec.spec_hash,
        seed=seed,
        metrics={key: value for key, value in final.items() if key not in ("epoch", "train_loss")},
        params=measured.params,
        flops=measured.flops,
        flops_elementwise=measured.flops_elementwise,
        activations=measured.activations,
        latency_ms=latency_ms,
        wall_time_s=previous_wall_time + time.perf_counter() - started,
        curve=state.curve,
        versions=_versions(device),
        notes=notes,
    )
