"""``evaluate_spec``: the validation metrics of given weights, without training (``scaling-lab
evaluate``). It validates exactly as a trial does (same images, resolution, post-processing and
precision), so a trial's checkpoint scores the metrics that trial reported."""

from __future__ import annotations

import torch

from scaling_lab.data.selection import limit_images, load_split, make_loader
from scaling_lab.errors import ScalingLabError
from scaling_lab.latency import resolve_device
from scaling_lab.models import build_model
from scaling_lab.models.weights import load_init
from scaling_lab.spec import BackboneSpec, DetectorSpec, Spec
from scaling_lab.train.evaluate import split_bootstrap
from scaling_lab.train.finetune import init_source
from scaling_lab.train.precision import precision_for
from scaling_lab.train.trainer import adapt_spec, objective_for
from scaling_lab.trial import Budget, Task


def evaluate_spec(spec: Spec, task: Task, budget: Budget | None = None, device: str | torch.device | None = None) -> dict[str, object]:
    """``{"metrics": ..., "notes": [...], "images": n}`` of ``spec`` with the task's (or spec's)
    ``init`` weights on the task's validation split (``budget.max_val_images`` of it)."""
    expected = DetectorSpec if task.kind == "detection" else BackboneSpec
    if not isinstance(spec, expected):
        raise ScalingLabError(f"a {task.kind} evaluation takes a {expected.kind} spec, got a {type(spec).kind} spec")
    source = init_source(spec, task)
    if not source:
        raise ScalingLabError("evaluate needs weights: give --init (a checkpoint, a timm/effdet state dict file or model name)")
    budget = budget or Budget(epochs=1)
    device = resolve_device(device)
    notes: list[str] = []
    val_set = load_split(task, "val")
    spec = adapt_spec(spec, task, val_set.num_classes, notes)
    val_set = limit_images(val_set, budget.max_val_images)
    model = build_model(spec)
    report = load_init(model, source)
    if report.reinitialized:
        raise ScalingLabError(
            f"{source} was trained for another class count than the {spec.num_classes} classes of the data {task.data!r} "
            f"({', '.join(report.reinitialized)} would start afresh); evaluate it on data with its classes "
            "(for COCO weights with 90 outputs: --labels category_ids)"
        )
    notes.append(report.note())
    precision = precision_for(task, device)
    model = precision.place(model).eval()
    loader = make_loader(task, val_set, spec.resolution, train=False, seed=0, device=device)
    metrics, _ = split_bootstrap(objective_for(spec, task, device).evaluate(model, loader, precision))
    return {"metrics": metrics, "notes": notes, "images": len(val_set), "spec_hash": spec.spec_hash}
