"""A trial: spec + task + budget in, metrics out. The unit every study runs.

``run_trial`` lives in ``scaling_lab.train.trainer``; this module holds the types that studies,
reports and the command line share with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from scaling_lab.errors import ScalingLabError
from scaling_lab.ranges import BUDGET_RANGES, TASK_RANGES, check_fields
from scaling_lab.spec import Spec, coerce_field

TASK_KINDS = ("detection", "classification")
OPTIMIZERS = ("sgd", "adamw")
# The official EfficientDet recipe: SGD at lr 0.08 for a global batch of 64, scaled linearly
# with the batch (Goyal et al.'s linear scaling rule) when ``lr`` is not given.
BASE_LR, BASE_BATCH_SIZE = 0.08, 64
BAD_DATA = ("error", "skip")


def _from_mapping(cls, data: Mapping[str, Any] | None, where: str):
    """Build a frozen dataclass from a mapping, naming unknown keys and wrong types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ScalingLabError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(hints)}")
    values = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and typing.get_origin(hints[key]) is tuple:  # knobs such as ``synthetic``: hashable pairs
            values[key] = tuple(sorted(value.items()))
        else:
            values[key] = coerce_field(f"{where}.{key}", value, hints[key])
    try:
        return cls(**values)
    except ScalingLabError as exc:
        raise ScalingLabError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Task:
    """What a trial trains on and how.

    The rule for a new setting: it belongs here, and so to a run folder's identity, when it can
    change what a trial measures (its data, its recipe, its numerics: ``bf16`` is here); it belongs
    to the study's ``Resources`` when it only changes where and how fast the same computation runs
    (CPUs, GPUs, workers), so that a study resumed on other hardware keeps its trials.

    ``data`` is ``synthetic`` (the embedded generated dataset; ``synthetic`` holds its knobs as
    sorted (key, value) pairs) or a folder: for detection ``<data>/{train,val}/images/`` with
    ``<data>/{train,val}/annotations.json`` unless the four explicit COCO paths are given (COCO
    2017: ``train2017/`` and ``annotations/instances_train2017.json``); for classification
    ``<data>/{train,val}/<class name>/*``.

    Training follows the official recipe where it has one: ``lr`` is the peak learning rate
    (default for SGD: 0.08 · batch_size / 64, see ``peak_lr``; AdamW needs it given), reached by a linear warm-up from a tenth of it over ``warmup_epochs``, then cosine decay to
    0; weight decay skips biases and norm weights; ``grad_clip`` is a max gradient norm (0 =
    off); ``ema`` is the decay of an exponential moving average of the weights, used for
    validation when above 0. ``bf16`` (autocast) and ``channels_last`` apply on CUDA; CPU runs
    in float32 unless ``bf16_cpu``. ``augment`` turns on the loader's flip and scale jitter.
    ``adapt_num_classes``: a spec whose ``num_classes`` differs from the dataset's is trained
    with the dataset's (and the trial says so in its notes) instead of being an error.
    ``latency`` times the model at batch 1 on the trial's device after training (a standalone
    run, which has the device to itself); studies turn it off, since their trials may share a
    device, and time each spec alone from the driver (``scaling_lab.latency.measure_latency``).
    ``labels`` numbers a COCO-format dataset's classes: ``contiguous`` (0..K-1) or
    ``category_ids`` (category id - 1: COCO's 90 classes, as the official and effdet COCO
    weights have them). ``bad_data``: an image that is missing, undecodable, truncated, a
    decompression bomb or not its annotated size, and an annotation with a box of no positive
    size or outside its image, an unknown category id or a duplicated image id, is an ``error``
    naming the file (the default), or with ``skip`` dropped and counted in the trial's notes.

    Pretrained weights: ``init`` (over the spec's own ``init``) is a checkpoint of ours, a timm
    EfficientNet or effdet EfficientDet state dict file, or a timm/effdet model name (see
    ``models.weights``); a classifier's weights fill a detector's backbone. ``freeze_backbone``
    trains everything but the backbone (its batch norms keep their statistics);
    ``freeze_backbone_bn`` keeps only the backbone's batch norms fixed; ``backbone_lr_scale``
    multiplies the backbone's learning rate.
    """

    kind: str = "detection"
    data: str = "synthetic"
    synthetic: tuple[tuple[str, Any], ...] = ()
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    grad_clip: float = 10.0
    ema: float = 0.0
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    bf16_cpu: bool = False
    augment: bool = True
    adapt_num_classes: bool = True
    latency: bool = True
    bad_data: str = "error"
    labels: str = "contiguous"
    init: str | None = None
    freeze_backbone: bool = False
    freeze_backbone_bn: bool = False
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ScalingLabError(f"task kind {self.kind!r} is not valid; valid kinds are {', '.join(TASK_KINDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ScalingLabError(f"task optimizer {self.optimizer!r} is not valid; valid values are {', '.join(OPTIMIZERS)}")
        if self.bad_data not in BAD_DATA:
            raise ScalingLabError(f"task bad_data {self.bad_data!r} is not valid; valid values are {', '.join(BAD_DATA)}")
        check_fields(self, TASK_RANGES, "task")
        if self.lr is None and self.optimizer != "sgd":
            raise ScalingLabError(
                f"task lr: optimizer {self.optimizer} has no official base rate to scale with the batch; give lr "
                "(e.g. 0.001), or use sgd, whose default is 0.08 · batch_size / 64"
            )

    @property
    def peak_lr(self) -> float:
        """``lr`` as given, else the official 0.08 at batch 64 scaled linearly to ``batch_size``."""
        return self.lr if self.lr is not None else BASE_LR * self.batch_size / BASE_BATCH_SIZE

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "task") -> "Task":
        return _from_mapping(cls, data, where)


@dataclass(frozen=True)
class Budget:
    """How much training a trial gets: ``epochs`` passes over at most ``max_train_images``
    training images (all when None), validated on at most ``max_val_images``."""

    epochs: int = 10
    max_train_images: int | None = None
    max_val_images: int | None = None
    eval_every: int = 1

    def __post_init__(self) -> None:
        check_fields(self, BUDGET_RANGES, "budget")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "budget") -> "Budget":
        return _from_mapping(cls, data, where)


@dataclass(frozen=True)
class Workers:
    """The data-parallel processes that train one trial (a study's ``resources.workers``,
    ``train --workers``). One is today's in-process trial; more run through Ray Train, each
    worker with its share of the task's (global) batch on ``gpus_per_worker`` GPUs (0: the CPU)."""

    count: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ScalingLabError(f"workers {self.count!r}: expected a whole number of at least 1")
        if not isinstance(self.cpus_per_worker, (int, float)) or isinstance(self.cpus_per_worker, bool) or self.cpus_per_worker <= 0:
            raise ScalingLabError(f"cpus_per_worker {self.cpus_per_worker!r}: expected a positive number")
        if not isinstance(self.gpus_per_worker, (int, float)) or isinstance(self.gpus_per_worker, bool) or self.gpus_per_worker < 0:
            raise ScalingLabError(f"gpus_per_worker {self.gpus_per_worker!r}: expected a number of at least 0")


def batch_split_problem(batch_size: int, workers: int, images: int | None = None) -> str | None:
    """Why a global batch cannot be shared out evenly among data-parallel workers (over
    ``images`` training images, when known), or None."""
    if workers == 1 or (batch_size % workers == 0 and (images is None or images >= batch_size)):
        return None
    over = f" over {images} training images" if images is not None else ""
    return (
        f"the global batch of {batch_size} cannot be split evenly among {workers} workers{over}; use a batch size that is "
        f"a multiple of {workers}{' and at most the number of training images' if images is not None else ''}"
    )


@dataclass
class TrialResult:
    """What a finished trial returns; one row of a study's results table comes from it.

    ``metrics`` holds the final validation metrics: detection ``AP``, ``AP50``, ``AP75``,
    ``APs``, ``APm``, ``APl`` (COCOeval, in [0, 1]); classification ``top1``, ``top5``.
    ``curve`` has one entry per validation: ``{"epoch": e, "train_loss": ..., <metrics>}``.
    ``bootstrap`` holds the final validation's bootstrap replicates over images (detection;
    ``schema.BOOTSTRAP_COLUMN``), which pair two trials scored on the same images.
    ``spec_hash`` is the hash of the spec the trial was given; ``notes`` says where the trial
    departed from it (e.g. ``num_classes`` taken from the dataset) or resumed from a checkpoint.
    """

    spec_hash: str
    seed: int
    metrics: dict[str, float]
    params: int
    flops: int
    flops_elementwise: int
    activations: int
    latency_ms: float | None
    wall_time_s: float
    curve: list[dict[str, float]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def curve_metrics(point: Mapping[str, float]) -> dict[str, float]:
    """A curve point's validation metrics (without its ``epoch`` and ``train_loss``)."""
    return {key: value for key, value in point.items() if key not in ("epoch", "train_loss")}


# Called after each validation with (epoch, metrics); it may raise to stop the trial
# (optuna.TrialPruned, or Ray Tune stopping it).
ReportCallback = Callable[[int, Mapping[str, float]], None]


class TrialFunction(Protocol):
    """What a study calls to train one candidate: ``scaling_lab.train.run_trial``, or a stand-in
    with the same parameters (the tests' fake trial; ``trial_function_problems`` checks one).
    ``workers`` and ``tracking`` are passed only to functions that take them (``takes_parameter``)."""

    def __call__(
        self,
        spec: Spec,
        task: Task,
        budget: Budget,
        report: ReportCallback | None = None,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        device: str | None = None,
        progress: bool = False,
    ) -> TrialResult: ...


def takes_parameter(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes ``name``, by name or through ``**kwargs`` (the optional
    parameters a study passes only to trial functions that take them: ``workers``, ``tracking``)."""
    parameters = inspect.signature(function).parameters.values()
    return any((p.name == name and p.kind not in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)) or p.kind == p.VAR_KEYWORD for p in parameters)


def trial_function_problems(function: Callable[..., Any]) -> list[str]:
    """Where ``function`` does not take ``TrialFunction``'s parameters (empty when it does):
    each must be accepted under its name, or by ``**kwargs``, and the optional ones need defaults."""
    wanted = list(inspect.signature(TrialFunction.__call__).parameters.values())[1:]
    given = inspect.signature(function).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in given.values())
    problems = []
    for parameter in wanted:
        found = given.get(parameter.name)
        if found is None or found.kind in (found.POSITIONAL_ONLY, found.VAR_POSITIONAL):
            if not takes_any:
                problems.append(f"it takes no parameter {parameter.name!r}")
        elif parameter.default is not parameter.empty and found.default is found.empty:
            problems.append(f"its parameter {parameter.name!r} needs a default ({parameter.default!r})")
    return problems
