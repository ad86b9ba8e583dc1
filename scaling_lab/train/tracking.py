"""A trial's curves where users look for them: TensorBoard event files and, optionally, an MLflow
run nested under its study's run (``mlflow_runs``).

One writer, ``TrialWriter``, opened by the process that trains (rank 0 of a data-parallel
trial), so that the local and Ray backends and ``train --logdir`` write the same files. In the
trial's folder, at the global optimization step:

- every logging step (each ``LOSS_CHECK_INTERVAL`` steps and each epoch's last): ``train/loss``,
  the mean loss of the steps since the previous point, and ``train/lr``, the task's learning
  rate at the last step (the backbone's is ``backbone_lr_scale`` times it);
- every validation, at its epoch's last step: ``epoch``, ``train/epoch_loss`` (the epoch's mean)
  and ``val/<metric>`` for each validation metric;
- at a completed trial's end, its hyperparameters (the hparams plugin's session, grouped by
  configuration so that TensorBoard aggregates a configuration's seeds); the hparams dashboard
  reads the final metrics beside them from the last ``val/`` points.

A resumed trial writes its points up to its checkpoint again, from the checkpoint (``Progress``
keeps them), into a new event file and removes the older files: the points a killed run wrote
after its checkpoint are gone from the files, not only hidden from readers that honour
TensorBoard's ``purge_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from scaling_lab.spec import Spec
from scaling_lab.train.checkpoint import Progress
from scaling_lab.train.mlflow_runs import MlflowTarget, MlflowTrialRun
from scaling_lab.trial import curve_metrics

EVENT_FILES = "events.out.tfevents.*"
FLUSH_SECONDS = 30  # how stale the files may be while a trial runs


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial writes its curves: ``logdir`` (its TensorBoard run, named by group,
    configuration and seed in a study), its ``hyperparameters``, the ``configuration`` its seeds
    share, and an MLflow run when the study asks for one."""

    logdir: Path
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    configuration: str = ""
    mlflow: MlflowTarget | None = None


def hparam_value(value: Any) -> bool | float | str:
    """A value as the hparams plugin (and MLflow's parameters) take it: bools, numbers and text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


class TrialWriter:
    """Writes one trial's curves (see the module's docstring); ``close`` when the trial stops."""

    def __init__(self, tracking: TrialTracking, progress: Progress, steps_per_epoch: int, spec: Spec, checkpoint: Path | None):
        from torch.utils.tensorboard import SummaryWriter

        self.tracking = tracking
        self.steps_per_epoch = steps_per_epoch
        earlier = sorted(tracking.logdir.glob(EVENT_FILES))
        self.tensorboard = SummaryWriter(str(tracking.logdir), flush_secs=FLUSH_SECONDS)
        for point in progress.steps:
            self._write_step(point)
        times = {point["step"]: point["time"] for point in progress.steps}
        for point in progress.curve:
            self._write_epoch(point, times.get(point["epoch"] * steps_per_epoch))
        self.tensorboard.flush()
        for path in earlier:  # their points up to the checkpoint are in the new file
            path.unlink()
        self.mlflow = None
        if tracking.mlflow is not None:
            self.mlflow = MlflowTrialRun(tracking.mlflow, tracking.hyperparameters, spec, checkpoint, progress)

    def _write_step(self, point: Mapping[str, float]) -> None:
        self.tensorboard.add_scalar("train/loss", point["loss"], point["step"], walltime=point["time"])
        self.tensorboard.add_scalar("train/lr", point["lr"], point["step"], walltime=point["time"])

    def _write_epoch(self, point: Mapping[str, float], walltime: float | None) -> None:
        step = int(point["epoch"]) * self.steps_per_epoch
        self.tensorboard.add_scalar("epoch", point["epoch"], step, walltime=walltime)
        self.tensorboard.add_scalar("train/epoch_loss", point["train_loss"], step, walltime=walltime)
        for name, value in curve_metrics(point).items():
            self.tensorboard.add_scalar(f"val/{name}", value, step, walltime=walltime)

    def step(self, point: Mapping[str, float]) -> None:
        """A logging step's point (``Progress.steps``), as it is taken."""
        self._write_step(point)

    def epoch(self, point: Mapping[str, float], walltime: float) -> None:
        """A validation's curve point, once its checkpoint is saved; at the wall time of its
        epoch's last step, as when written again on resuming."""
        self._write_epoch(point, walltime)
        if self.mlflow is not None:
            self.mlflow.epoch(point)

    def finish(self, final: Mapping[str, float]) -> None:
        """The trial completed: its hyperparameters beside its final metrics."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        hyperparameters = {name: hparam_value(value) for name, value in self.tracking.hyperparameters.items()}
        summary = hparams_pb(hyperparameters, trial_id=self.tracking.configuration or None)
        self.tensorboard.file_writer.add_summary(summary, int(final["epoch"]) * self.steps_per_epoch)
        if self.mlflow is not None:
            self.mlflow.finish()

    def close(self) -> None:
        self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.close()
