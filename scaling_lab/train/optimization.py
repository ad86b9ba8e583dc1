"""How a trial's weights are optimized: SGD/AdamW groups, the warm-up + cosine schedule, the
weight average, batch-norm momentum for short trials, and seeding."""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from scaling_lab.train.finetune import parameter_groups
from scaling_lab.trial import Task

WARMUP_START_FRACTION = 0.1  # the official warm-up starts at lr / 10
SGD_MOMENTUM = 0.9
# The official batch-norm momentum (0.01: running statistics over the last few hundred steps)
# suits runs of 100k+ steps; a short trial's statistics would still mostly be the initial ones at
# validation. A trial of S steps uses max(0.01, min(0.1, BN_STEPS_SCALE / S)) instead.
BN_STEPS_SCALE = 20
MAX_BN_MOMENTUM = 0.1


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
    the backbone's learning rate scaled by ``task.backbone_lr_scale``. The multi-tensor
    (``foreach``) update everywhere: torch takes it by default on CUDA only, and on the CPU it
    gives the same weights to the bit in less time (the quickstart's AdamW steps: 2.2 s of a
    47 s trial with the per-tensor loop)."""
    groups = parameter_groups(model, task)
    if task.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=task.peak_lr, momentum=SGD_MOMENTUM, foreach=True)
    return torch.optim.AdamW(groups, lr=task.peak_lr, foreach=True)


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


def worker_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a data-parallel worker's own random draws (dropout, drop-path) in an epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint32)[0])
