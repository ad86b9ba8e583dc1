"""A study's configuration: what to search, how to train each candidate, how to sample, stop
early, repeat and place trials, and where to keep the results (read from study files by
``study_files``).

A study is a base spec, one search space (or an ordered list of ``groups``, each with its own
space; a group that uses an earlier group's best values runs once that group is finished), a
task, objectives, a sampler, early stopping, seeds, resources, a backend and a storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling_lab.spec import Spec
from scaling_lab.study.search_space import SearchSpace
from scaling_lab.trial import Budget, Task, Workers


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    def to_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True)
class Group:
    """One sub-experiment: its label in the results (``group``), its space and, for sampled
    studies, how many configurations to train."""

    name: str
    space: SearchSpace
    trials: int | None


@dataclass(frozen=True)
class Sampler:
    type: str = "tpe"
    seed: int = 0
    trials: int | None = None


@dataclass(frozen=True)
class EarlyStopping:
    type: str = "none"
    min_epochs: int = 1
    reduction_factor: int = 3


@dataclass(frozen=True)
class Resources:
    """Per-trial resources for the Ray backend; ``gpus: auto`` sizes a fraction of a GPU from
    the spec's measured activations and parameters (small specs share a GPU).

    ``workers`` above 1 makes each trial data-parallel (either backend): Ray Train runs that
    many processes with ``cpus_per_worker`` and ``gpus_per_worker`` each, sharing the task's
    batch (the global batch); ``cpus`` and ``gpus`` are then unused."""

    cpus: float = 1.0
    gpus: float | str = 0.0
    gpu_memory_gb: float = 80.0
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def trial_workers(self) -> Workers:
        return Workers(self.workers, self.cpus_per_worker, self.gpus_per_worker)


@dataclass(frozen=True)
class Repeats:
    """Seeds per configuration: fixed (``repeats: 3``, ``min == max``) or adaptive
    (``repeats: {min, max, until: resolved, margin, budget}``: one more seed per round for the
    configurations of comparisons still open; see ``scaling_lab.study.adaptive``). ``margin`` is
    in the objective's own unit (AP 0.01 is one point); the budget counts trials or hours of
    trial compute (the sum of trial wall times)."""

    min: int
    max: int
    until: str | None = None
    margin: float = 0.0
    budget_trials: int | None = None
    budget_hours: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.until is not None

    def definition(self) -> dict[str, Any]:
        """The part that decides results (the budget only decides how much runs)."""
        return {"min": self.min, "max": self.max, "until": self.until, "margin": self.margin}

    def to_dict(self) -> dict[str, Any]:
        return {**self.definition(), "budget": {"trials": self.budget_trials, "hours": self.budget_hours}}


TRACKING_KINDS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class Tracking:
    """Where trials' curves go. Every trial writes TensorBoard files under the run folder's
    ``tensorboard/``; ``mlflow`` also logs one MLflow run per trial, nested under one run of
    the study, at ``uri`` (an MLflow tracking URI; by default ``mlflow.db`` in the run folder,
    with the artifacts in ``mlflow-artifacts/``)."""

    kind: str = "tensorboard"
    uri: str | None = None


@dataclass(frozen=True)
class StudyConfig:
    name: str
    experiment: str | None
    base: Spec
    groups: tuple[Group, ...]
    task: Task
    budget: Budget
    objectives: tuple[Objective, ...]
    sampler: Sampler
    early_stopping: EarlyStopping
    seeds: tuple[int, ...]  # the seeds every configuration gets (an adaptive study's first ``repeats.min``)
    resources: Resources
    backend: str
    storage: str | None
    run_dir: Path
    measure_latency: bool
    derive_group: str | None
    study_file: str
    study_yaml: str
    repeats: Repeats | None = None  # None: ``Repeats(len(seeds), len(seeds))``
    tracking: Tracking = Tracking()

    @property
    def repeat_plan(self) -> Repeats:
        return self.repeats or Repeats(len(self.seeds), len(self.seeds))

    @property
    def storage_url(self) -> str:
        """The Optuna storage: ``sqlite`` (default) or ``journal`` under the run folder, or any
        SQLAlchemy URL."""
        if self.storage in (None, "sqlite"):
            return f"sqlite:///{self.run_dir / 'study.db'}"
        if self.storage == "journal":
            return f"journal:///{self.run_dir / 'study.journal'}"
        return self.storage

    @property
    def tensorboard_dir(self) -> Path:
        """Where the trials' TensorBoard runs are: one folder per trial, ``[<group>/]<config id>-seed<seed>``."""
        return self.run_dir / "tensorboard"

    @property
    def mlflow_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"

    @property
    def storage_is_local(self) -> bool:
        """A file in the run folder: one writer at a time (the run holds a lock)."""
        return self.storage_url.startswith(("sqlite:", "journal:"))

    @property
    def needs_latency(self) -> bool:
        """Whether each spec's latency is timed (by the driver: trials never time themselves)."""
        return self.measure_latency or self.task.latency or any(o.metric == "latency_ms" for o in self.objectives)
