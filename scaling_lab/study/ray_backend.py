"""The ``ray`` backend: Ray Tune runs the trials, Optuna's sampler chooses them.

An ``OptunaSearch`` over the study's own storage suggests configurations (enqueued grid points
and seeds first) and, in the driver, writes each trial's record and outcome to the storage, so
the Optuna study is the same whichever backend ran it. ASHA / HyperBand / median stopping is
Ray's scheduler. Each trial asks for the study's CPUs and GPUs, or with ``gpus: auto`` a
fraction of a GPU sized from its spec's measured activations and parameters.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from typing import Any, Mapping

from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from scaling_lab.errors import ScalingLabError
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.ray_output import quiet_ray
from scaling_lab.study.runner import MAX_CONSECUTIVE_REJECTIONS, CandidateRunner, StudySession, cost_counts, open_storage
from scaling_lab.study.search_space import SearchSpace
from optuna.trial import TrialState

MAX_TRIALS_PER_GPU = 8
BYTES_PER_ACTIVATION = 4 * 3  # float32, kept for backward, plus its gradient
BYTES_PER_PARAMETER = 4 * 4  # weights, gradients and two optimizer moments
RAY_TRIAL_RETRIES = 2


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trainable(trial_config: dict[str, Any], runner: CandidateRunner, space: SearchSpace) -> None:
    """One Ray trial: report every validation (the scheduler may stop it there), then the outcome."""

    def on_epoch(epoch: int, metrics: Mapping[str, float], record: dict) -> None:
        tune.report({**_numbers(metrics), "epoch": epoch, "record": json.dumps(record)})

    outcome = runner.run(space, trial_config["values"], trial_config["seed"], trial_config["config_id"], on_epoch)
    # The outcome is one step past the last epoch, so a scheduler never stops a trial before it.
    final = {"record": json.dumps(outcome.record), "epoch": runner.config.budget.epochs + 1, **_numbers(outcome.record.get("costs") or {})}
    if outcome.state == "complete":
        final.update(_numbers(outcome.record["metrics"]))
        final["objective_values"] = json.dumps(outcome.values)
    tune.report(final)


class StudySearcher(OptunaSearch):
    """OptunaSearch on the study's storage for one group: it stops suggesting when the group's
    plan is met, and records each finished trial's outcome in the Optuna study."""

    def __init__(self, session: StudySession, group: Group):
        config = session.config
        self.session, self.group = session, group
        metrics = [o.metric for o in config.objectives]
        modes = ["max" if o.direction == "maximize" else "min" for o in config.objectives]
        super().__init__(
            space=self._define,
            metric=metrics[0] if len(metrics) == 1 else metrics,
            mode=modes[0] if len(modes) == 1 else modes,
            sampler=session.study.sampler,
            study_name=config.name,
            storage=open_storage(config, heartbeat=False),
        )

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher with the experiment; the driver's session (storage lock,
        open study) stays behind: a resumed run builds a new Tuner from the Optuna storage."""
        return {key: value for key, value in self.__dict__.items() if key != "session"}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def _define(self, ot_trial: Any) -> dict[str, Any]:
        group, _, values, seed, cid = self.session.start_values(ot_trial, self.group)
        return {"group": group.name, "seed": seed, "config_id": cid, "values": values}

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.session.remaining(self.group) <= 0:
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        record = json.loads(result["record"]) if result and "record" in result else {}
        if error:
            record.update(state="failed", error=f"the Ray trial failed {RAY_TRIAL_RETRIES + 1} times (worker died or raised); see its logs under {self.session.config.run_dir / 'ray'}")
        elif record.get("state", "running") == "running":
            record.update(state="pruned", error="stopped early by the scheduler")
        ot_trial.set_user_attr("record", record)
        state = {"complete": TrialState.COMPLETE, "failed": TrialState.FAIL}.get(record["state"], TrialState.PRUNED)
        values = json.loads(result["objective_values"]) if state == TrialState.COMPLETE else None
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)
        self.session.refresh()


def _resources(config: StudyConfig, space: SearchSpace, base_costs: dict[str, float], cluster_gpus: float):
    """Per-trial resources; with ``gpus: auto`` the GPU share is 1/n for the largest n (up to
    MAX_TRIALS_PER_GPU) whose estimated training memory fits, none on a cluster without GPUs."""
    resources = config.resources

    def for_trial(trial_config: dict[str, Any]) -> dict[str, float]:
        gpus = resources.gpus
        if gpus == "auto":
            if cluster_gpus == 0:
                gpus = 0.0
            else:
                try:
                    costs = cost_counts(space.build_spec(config.base, trial_config["values"]), base_costs)
                except ScalingLabError:  # an infeasible candidate: the trial records it as rejected at once
                    return {"cpu": float(resources.cpus), "gpu": 0.0}
                memory = costs["activations"] * config.task.batch_size * BYTES_PER_ACTIVATION + costs["params"] * BYTES_PER_PARAMETER
                per_gpu = max(1, min(MAX_TRIALS_PER_GPU, math.floor(resources.gpu_memory_gb * 1e9 / max(memory, 1))))
                gpus = 1.0 / per_gpu
        return {"cpu": float(resources.cpus), "gpu": float(gpus)}

    return for_trial


def _scheduler(config: StudyConfig):
    stopping = config.early_stopping
    if stopping.type == "none":
        return None
    objective = config.objectives[0]
    mode = "max" if objective.direction == "maximize" else "min"
    # Count epochs, as the local backend's Optuna pruners do, not Ray's iterations or seconds;
    # the outcome's report is epoch ``epochs + 1``.
    common = dict(time_attr="epoch", metric=objective.metric, mode=mode)
    max_t = config.budget.epochs + 1
    if stopping.type == "asha":
        return tune.schedulers.ASHAScheduler(
            **common, max_t=max_t, grace_period=stopping.min_epochs, reduction_factor=stopping.reduction_factor
        )
    if stopping.type == "hyperband":
        return tune.schedulers.HyperBandScheduler(**common, max_t=max_t, reduction_factor=stopping.reduction_factor)
    return tune.schedulers.MedianStoppingRule(**common, grace_period=stopping.min_epochs)


def run_ray(session: StudySession, address: str | None) -> None:
    """Run each group with a Ray Tuner, on a local Ray (all CPUs) or the cluster at ``address``."""
    import ray

    config = session.config
    # Rejected and failed trials report no objective metric; the record says what happened.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    started_here = not ray.is_initialized()
    quiet_ray()
    if started_here:
        try:
            ray.init(address=address, log_to_driver=False) if address else ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
        except ConnectionError as exc:
            raise ScalingLabError(f"--address {address!r}: cannot attach to a Ray cluster there ({exc}); start one with 'ray start --head'") from None
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        for group in config.groups:
            session.prepare(group)
            space = session.space(group)
            trainable = tune.with_resources(
                tune.with_parameters(_trainable, runner=session.candidates, space=space),
                _resources(config, space, session.base_costs, cluster_gpus),
            )
            while session.remaining(group) > 0:
                before = session.finished_count()
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=StudySearcher(session, group), scheduler=_scheduler(config), num_samples=-1),
                    run_config=tune.RunConfig(
                        name=f"{config.name}-{group.name or 'main'}-{time.strftime('%Y%m%d-%H%M%S')}",
                        storage_path=str(config.run_dir / "ray"),
                        failure_config=tune.FailureConfig(max_failures=RAY_TRIAL_RETRIES),
                        verbose=0,
                    ),
                )
                tuner.fit()
                if session.finished_count() == before:
                    raise ScalingLabError(f"{config.study_file}: Ray ran no trial for group {group.name or 'main'!r}; check the cluster's free resources against resources: in the study")
                if session.consecutive_rejections() >= MAX_CONSECUTIVE_REJECTIONS:
                    raise ScalingLabError(
                        f"{group.space.source}: constraints: the last {MAX_CONSECUTIVE_REJECTIONS} sampled candidates were all rejected; widen the range"
                    )
    finally:
        if started_here:
            ray.shutdown()
