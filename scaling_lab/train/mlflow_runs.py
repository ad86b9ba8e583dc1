"""MLflow runs for a study's ``tracking: mlflow`` (the optional ``mlflow`` extra): one run per
study, holding the study file, and one run per trial nested under it, holding the trial's
hyperparameters as parameters, its curve points as metrics at their epoch, its spec as an
artifact and its checkpoint's path as a tag.

The study's run is made once and its id kept in the study, so that a resumed study and other
workers log under it. A trial resumed from its checkpoint finds its run again by name under the
study's and logs only the epochs that run lacks, from the checkpoint's curve; epochs are logged
once their checkpoint is saved, so a killed trial never logged an epoch it trains again. A trial
that starts afresh replaces an earlier run of its name (whose points a new run would repeat).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from scaling_lab.errors import ScalingLabError
from scaling_lab.spec import Spec
from scaling_lab.train.checkpoint import Progress


@dataclass(frozen=True)
class MlflowTarget:
    """Where a trial's run goes: the tracking URI, its study's run, the trial's run name."""

    uri: str
    parent_run_id: str
    name: str


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ScalingLabError("tracking: mlflow needs the mlflow package; install it with: pip install 'scaling-lab[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def study_run(uri: str, experiment: str, run_id: str | None, study_yaml: str, artifact_location: str | None) -> str:
    """The study's run id: ``run_id`` while the store has it, else a new run in ``experiment``
    (made, with ``artifact_location``, when missing) with the study file as ``study.yaml``."""
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    if run_id is not None:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                return run_id
        except MlflowException:
            pass  # the store was replaced: a new run, as for a deleted one
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment, artifact_location=artifact_location)
    run = client.create_run(experiment_id, run_name=experiment)
    client.log_text(run.info.run_id, study_yaml, "study.yaml")
    return run.info.run_id


def end_study_run(uri: str, run_id: str) -> None:
    """Mark the study's run finished (its study has run every planned trial)."""
    _client(uri).set_terminated(run_id, "FINISHED")


class MlflowTrialRun:
    """A trial's run under its study's (see the module's docstring)."""

    def __init__(self, target: MlflowTarget, hyperparameters: Mapping[str, Any], spec: Spec, checkpoint: Path | None, progress: Progress):
        from mlflow.entities import Param

        self.client = _client(target.uri)
        self.finished = False
        experiment_id = self.client.get_run(target.parent_run_id).info.experiment_id
        query = f"tags.mlflow.parentRunId = '{target.parent_run_id}' and tags.mlflow.runName = '{target.name}'"
        earlier = self.client.search_runs([experiment_id], filter_string=query)
        if progress.epoch > 0 and earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            for run in earlier:
                self.client.delete_run(run.info.run_id)
            tags = {"mlflow.parentRunId": target.parent_run_id}
            self.run_id = self.client.create_run(experiment_id, run_name=target.name, tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=[Param(name, str(value)) for name, value in hyperparameters.items()])
        self.client.log_dict(self.run_id, spec.to_dict(), "spec.json")
        if checkpoint is not None:
            self.client.set_tag(self.run_id, "checkpoint", str(checkpoint))
        logged = max((metric.step for metric in self.client.get_metric_history(self.run_id, "train_loss")), default=0)
        for point in progress.curve:
            if point["epoch"] > logged:
                self.epoch(point)

    def epoch(self, point: Mapping[str, float]) -> None:
        """A validation's curve point: each value at the point's epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch = int(point["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(name, float(value), now, epoch) for name, value in point.items() if name != "epoch"])

    def finish(self) -> None:
        self.finished = True

    def close(self) -> None:
        """End the run: finished when the trial completed, killed when it stopped before."""
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "KILLED")
