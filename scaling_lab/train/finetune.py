"""Starting a trial from pretrained weights: the ``init`` source, frozen backbone or backbone
batch norms, and a smaller learning rate for the backbone.

The backbone is a detector's EfficientNet, or a classifier's everything but its final ``fc``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from scaling_lab.models.detector import EfficientDet
from scaling_lab.models.weights import load_init
from scaling_lab.spec import Spec
from scaling_lab.trial import Task


def init_source(spec: Spec, task: Task) -> str | None:
    """The task's ``init`` wins over the spec's (a study sets one for all its specs)."""
    return task.init or spec.init


def initialize(model: nn.Module, spec: Spec, task: Task) -> str | None:
    """Load the init weights (if any) into ``model`` and freeze what the task freezes; returns a
    note for the trial's result."""
    note = None
    source = init_source(spec, task)
    if source:
        note = load_init(model, source).note()
    if task.freeze_backbone:
        for parameter in backbone_parameters(model):
            parameter.requires_grad_(False)
    elif task.freeze_backbone_bn:
        for module in _backbone_batch_norms(model):
            module.requires_grad_(False)
    return note


def _is_backbone(model: nn.Module, name: str) -> bool:
    if isinstance(model, EfficientDet):
        return name == "backbone" or name.startswith("backbone.")
    return not (name == "fc" or name.startswith("fc."))


def backbone_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return (parameter for name, parameter in model.named_parameters() if _is_backbone(model, name))


def _backbone_batch_norms(model: nn.Module) -> Iterator[nn.Module]:
    return (
        module for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_backbone(model, name)
    )


def train_mode(model: nn.Module, task: Task) -> None:
    """``model.train()``, except that a frozen backbone's (or frozen backbone batch norms')
    running statistics stay as loaded."""
    model.train()
    if task.freeze_backbone or task.freeze_backbone_bn:
        for module in _backbone_batch_norms(model):
            module.eval()


def parameter_groups(model: nn.Module, task: Task) -> list[dict]:
    """Optimizer groups: weight decay on weights (not biases or norm weights), and the backbone
    at ``task.backbone_lr_scale`` times the learning rate. Frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    backbone = {id(parameter) for parameter in backbone_parameters(model)}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups.setdefault((id(parameter) in backbone, parameter.ndim > 1), []).append(parameter)
    return [
        {"params": params, "weight_decay": task.weight_decay if decayed else 0.0, "lr": task.peak_lr * (task.backbone_lr_scale if in_backbone else 1.0)}
        for (in_backbone, decayed), params in sorted(groups.items())
    ]
