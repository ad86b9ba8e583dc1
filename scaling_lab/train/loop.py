"""The epoch loop of a trial: the training step, the divergence check and validation, the same
for one process and for data-parallel workers (``Replicas``)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from scaling_lab.errors import ScalingLabError
from scaling_lab.train.checkpoint import CHECKPOINT_FORMAT, Progress, rng_state, set_rng_state
from scaling_lab.train.finetune import train_mode
from scaling_lab.train.optimization import WeightAverage
from scaling_lab.train.precision import Precision
from scaling_lab.train.replicas import Replicas
from scaling_lab.train.tracking import TrialWriter
from scaling_lab.trial import Task

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


class Objective(Protocol):
    """What is trained: a batch's loss and the validation metrics (per task kind, in ``trainer``)."""

    def loss(self, model: nn.Module, batch: Any, channels_last: bool) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Any, precision: Precision) -> dict[str, float]: ...


@dataclass
class Training:
    """A model being trained: its optimizer, schedule and weight average, and the step.

    ``model`` is the bare model (checkpoints, validation); ``step_model`` is what the step calls
    (the model, compiled and/or wrapped for gradient averaging across workers)."""

    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    average: WeightAverage | None
    objective: Objective
    precision: Precision
    task: Task
    replicas: Replicas

    def step(self, batch: Any) -> torch.Tensor:
        """One optimization step on a batch (this worker's share of it); its loss, detached."""
        with self.precision.autocast():
            loss = self.objective.loss(self.step_model, batch, self.precision.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.task.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.task.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update()
        return loss.detach()

    def learning_rate(self) -> float:
        """The task's learning rate at the last step (the backbone's is ``backbone_lr_scale`` times it)."""
        return self.task.peak_lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch - 1)

    def train_epoch(self, loader: Any, epoch: int, state: Progress, bar: tqdm, trial: str, writer: TrialWriter | None = None) -> float:
        """Train one epoch; the mean loss over its steps (over all workers). Each loss check is
        a logging step, kept in ``state.steps`` and written by ``writer``. Raises
        ``TrainingDiverged`` on every rank at once: they all check the same summed loss."""
        loader.set_epoch(epoch)
        train_mode(self.model, self.task)
        loss_sum = torch.zeros((), device=self.precision.device)
        steps = len(loader)
        logged_total, logged_step = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            loss_sum += self.step(batch)
            if state.initial_loss is None:
                state.initial_loss = self.replicas.sum(loss_sum).item() / self.replicas.count
            if step % LOSS_CHECK_INTERVAL == 0 or step == steps:
                total = self.replicas.sum(loss_sum).item() / self.replicas.count
                mean_loss = total / step
                point = {"step": epoch * steps + step, "loss": (total - logged_total) / (step - logged_step), "lr": self.learning_rate(), "time": time.time()}
                state.steps.append(point)
                if writer is not None:
                    writer.step(point)
                logged_total, logged_step = total, step
                reason = divergence(mean_loss, state.initial_loss)
                if reason:
                    raise TrainingDiverged(
                        f"training diverged: {reason} in epoch {epoch + 1} (by step {step}) "
                        f"of {trial}; lower task lr or set grad_clip"
                    )
                bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4f}")
            bar.update()
        return mean_loss

    def validate(self, loader: Any) -> dict[str, float]:
        """The validation metrics of the weight average (when kept) or the model."""
        evaluated = self.average.module if self.average is not None else self.model
        return self.objective.evaluate(evaluated, loader, self.precision)

    def checkpoint(self, fingerprint: str, state: Progress) -> dict[str, Any]:
        """Everything a resume needs, as ``torch.save`` takes it (rank 0's RNG states)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.average.state_dict() if self.average is not None else None,
            "rng": rng_state(),
            **asdict(state),
        }

    def restore(self, saved: dict[str, Any]) -> Progress:
        """Continue from a checkpoint; the progress it carries."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(saved["ema"])
        set_rng_state(saved["rng"])
        return Progress(
            **{name: saved[name] for name in ("epoch", "curve", "wall_time_s")}, initial_loss=saved.get("initial_loss"),
            bootstrap=saved.get("bootstrap") or {}, steps=saved.get("steps", []),
        )
