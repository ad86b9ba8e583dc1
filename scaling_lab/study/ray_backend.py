"""The ``ray`` backend: Ray Tune runs the trials, Optuna's sampler chooses them.

A ``StudySearcher`` in the driver takes each trial from the study session (waiting grid points
and seeds first, then new configurations of a sampled group, under the study's planning lock),
sends heartbeats for the trials Ray is running, reports each validation to Optuna at its epoch
(as the local backend does, so dashboards agree) and records each outcome in the storage: the
Optuna study is the same whichever backend ran it. ASHA / HyperBand / median stopping is Ray's
scheduler. Each trial asks for the study's CPUs and GPUs, or with ``gpus: auto`` a fraction of a
GPU sized from its spec's measured activations and parameters.

A data-parallel trial (``resources.workers`` above 1) is one Tune trial that starts its own Ray
Train workers (``scaling_lab.train.distributed``); it reserves next to nothing itself, and Tune
runs no more such trials at once than the cluster holds all the workers of (``concurrent_trials``).

Trials that share a device do not time latency; when the study needs it, the driver times each
finished candidate alone once the Tuner's trials have stopped (a group's Tuner also runs the
trials planned ahead for later groups: ``plan_ahead``), then tells Optuna the outcome.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import time
from typing import Any, Mapping

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import Searcher

from scaling_lab.errors import MachineFault, ScalingLabError
from scaling_lab.spec import spec_from_dict
from scaling_lab.study.candidate import CandidateRunner, Outcome, cost_counts
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.ray_output import quiet_ray
from scaling_lab.study.session import StudySession, check_rejections, optuna_state, tell_once
from scaling_lab.study.storage import Heartbeat

MAX_TRIALS_PER_GPU = 8
BYTES_PER_ACTIVATION = 4 * 3  # float32, kept for backward, plus its gradient
BYTES_PER_PARAMETER = 4 * 4  # weights, gradients and two optimizer moments
RAY_TRIAL_RETRIES = 2
# What the Tune trial of a data-parallel trial reserves for itself: it only starts its Ray Train
# workers and relays their reports (Tune refuses a trial that reserves nothing).
COORDINATOR_CPUS = 0.01


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trainable(trial_config: dict[str, Any], runner: CandidateRunner) -> None:
    """One Ray trial: report every validation (the scheduler may stop it there), then the outcome."""

    def on_epoch(epoch: int, metrics: Mapping[str, float], record: dict) -> None:
        tune.report({**_numbers(metrics), "epoch": epoch, "record": json.dumps(record)})

    outcome = runner.run(
        trial_config["space"], trial_config["values"], trial_config["seed"], trial_config["config_id"], trial_config["group"], on_epoch, time_latency=False
    )
    # The outcome is one step past the last epoch, so a scheduler never stops a trial before it.
    final = {"record": json.dumps(outcome.record), "epoch": runner.config.budget.epochs + 1, "outcome": outcome.state}
    final.update(_numbers(outcome.record.get("costs") or {}))
    if outcome.state == "complete":
        final.update(_numbers(outcome.record["metrics"]))
    tune.report(final)


class StudySearcher(Searcher):
    """Hands Ray the study's trials for one group (and any waiting trial of another group) and
    records what becomes of them."""

    def __init__(self, session: StudySession, group: Group, heartbeat: Heartbeat):
        objective = session.config.objectives[0]
        super().__init__(metric=objective.metric, mode="max" if objective.direction == "maximize" else "min")
        self.session, self.group, self.heartbeat = session, group, heartbeat
        self.trials: dict[str, Any] = {}
        self.awaiting_latency: list[tuple[Any, Outcome]] = []
        self.interrupted: list[str] = []  # why trials stopped for the machine's fault: no new ones start

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher with the experiment; the driver's session, heartbeat thread
        and open trials stay behind: the Optuna storage, not Tune's checkpoint, is what resumes."""
        return {key: value for key, value in self.__dict__.items() if key not in ("session", "heartbeat", "trials", "awaiting_latency", "interrupted")}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def suggest(self, trial_id: str) -> dict | str | None:
        started = None if self.interrupted else self.session.next_trial(self.group)
        if started is None:
            return Searcher.FINISHED
        trial, group, space, values, seed, cid = started
        self.trials[trial_id] = trial
        self.heartbeat.add(trial._trial_id)
        # The space travels with the trial: a waiting trial may belong to another group than this one.
        return {"group": group.name, "seed": seed, "config_id": cid, "values": values, "space": space}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self.trials.get(trial_id)
        epoch = result.get("epoch")
        if trial is None or self.metric not in result or epoch is None or epoch > self.session.config.budget.epochs:
            return
        trial.set_user_attr("record", json.loads(result["record"]))
        if len(self.session.config.objectives) == 1:
            trial.report(float(result[self.metric]), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return
        record = json.loads(result["record"]) if result and "record" in result else dict(trial.user_attrs.get("record") or {})
        if error:  # the trial function records its own errors: its worker died (killed, out of host memory)
            record.update(
                state="interrupted",
                error=f"the Ray trial's worker died {RAY_TRIAL_RETRIES + 1} times; see its logs under {self.session.config.run_dir / 'ray'}",
            )
        elif record.get("state", "running") == "running":
            record.update(state="pruned", error="stopped early by the scheduler")
        outcome = Outcome(record["state"], record)
        if outcome.state == "complete" and self.session.config.needs_latency:
            self.awaiting_latency.append((trial, outcome))  # timed alone once this Tuner's trials stop
            if self.session.out is not None:
                metrics = record.get("metrics") or {}
                score = f" ({self.metric} {metrics[self.metric]:.4g})" if isinstance(metrics.get(self.metric), (int, float)) else ""
                print(
                    f"[{self.session.config.name}] trial {trial.number} trained{score}; recorded once this Tuner's trials stop "
                    f"and its latency is timed alone ({len(self.awaiting_latency)} waiting, {len(self.trials)} training)",
                    file=self.session.out,
                    flush=True,
                )
            return
        self.finish(trial, outcome)

    def finish(self, trial: Any, outcome: Outcome) -> None:
        if outcome.state == "complete":
            outcome = self.session.candidates.with_objectives(outcome)
        tell_once(self.session, trial, outcome.record, outcome.values, optuna_state(outcome.state))
        if outcome.state == "interrupted":
            self.interrupted.append(f"trial {trial.number}: {outcome.record['error']}")
        self.heartbeat.discard(trial._trial_id)
        self.session.refresh()

    def abandon(self) -> None:
        """Fail (as interrupted, so they are enqueued again) the trials Tune stopped without an
        outcome, e.g. on Ctrl-C."""
        left = list(self.trials.values()) + [trial for trial, _ in self.awaiting_latency]
        for trial in left:
            with contextlib.suppress(UpdateFinishedTrialError, ValueError):
                self.session.study.tell(trial, state=TrialState.FAIL)
            self.heartbeat.discard(trial._trial_id)
        self.trials.clear()
        self.awaiting_latency.clear()

    def time_latencies(self) -> None:
        """Time each finished candidate alone, here, now that no trial of the group runs."""
        while self.awaiting_latency:
            trial, outcome = self.awaiting_latency.pop(0)
            try:
                reason = self.session.candidates.record_latency(outcome.record, spec_from_dict(outcome.record["spec"]))
            except Exception as exc:  # noqa: BLE001 - this candidate fails alone
                reason = f"latency timing failed: {type(exc).__name__}: {exc}"
            if reason:
                outcome.record.update(state="failed", error=reason)
                outcome = Outcome("failed", outcome.record)
            self.finish(trial, outcome)


def estimated_training_bytes(costs: Mapping[str, float], batch_size: int) -> float:
    """GPU memory a trial of this spec needs at this batch size (``gpus: auto`` sizes by it);
    ``benchmarks/gpu_packing.py memory`` checks it against the measured peak."""
    return costs["activations"] * batch_size * BYTES_PER_ACTIVATION + costs["params"] * BYTES_PER_PARAMETER


def _resources(config: StudyConfig, base_costs: dict[str, float], cluster_gpus: float):
    """Per-trial resources; with ``gpus: auto`` the GPU share is 1/n for the largest n (up to
    MAX_TRIALS_PER_GPU) whose estimated training memory fits, none on a cluster without GPUs.
    A data-parallel trial reserves nothing itself: its workers do (``concurrent_trials``)."""
    resources = config.resources

    def for_trial(trial_config: dict[str, Any]) -> dict[str, float]:
        if resources.workers > 1:  # the trial only coordinates: its Ray Train workers reserve their own
            return {"cpu": COORDINATOR_CPUS, "gpu": 0.0}
        gpus = resources.gpus
        if gpus == "auto":
            if cluster_gpus == 0:
                gpus = 0.0
            else:
                try:
                    costs = cost_counts(trial_config["space"].build_spec(config.base, trial_config["values"]), base_costs)
                except Exception:  # noqa: BLE001 - infeasible or unmeasurable: the trial records why at once
                    return {"cpu": float(resources.cpus), "gpu": 0.0}
                memory = estimated_training_bytes(costs, config.task.batch_size)
                per_gpu = max(1, min(MAX_TRIALS_PER_GPU, math.floor(resources.gpu_memory_gb * 1e9 / max(memory, 1))))
                gpus = 1.0 / per_gpu
        return {"cpu": float(resources.cpus), "gpu": float(gpus)}

    return for_trial


def concurrent_trials(config: StudyConfig, cluster: Mapping[str, float]) -> int | None:
    """How many data-parallel trials may run at once: as many as the cluster holds all the
    workers of, so that every trial Tune starts can start its workers (more would wait for each
    other's resources for ever). None (Tune's own limit) for one-process trials."""
    resources = config.resources
    if resources.workers == 1:
        return None
    fits = [cluster.get("CPU", 0) // (resources.workers * resources.cpus_per_worker + COORDINATOR_CPUS)]
    if resources.gpus_per_worker > 0:
        fits.append(cluster.get("GPU", 0) // (resources.workers * resources.gpus_per_worker))
    if min(fits) < 1:
        raise ScalingLabError(
            f"resources: a trial's {resources.workers} workers need {resources.workers * resources.cpus_per_worker:g} CPUs and "
            f"{resources.workers * resources.gpus_per_worker:g} GPUs; the Ray cluster has {cluster.get('CPU', 0):g} CPUs and "
            f"{cluster.get('GPU', 0):g} GPUs. Lower resources.workers or add nodes"
        )
    return int(min(fits))


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


def _fit_group(session: StudySession, group: Group, heartbeat: Heartbeat, cluster: Mapping[str, float]) -> None:
    """Run the group's trials with Ray Tuners until it is settled (waiting for other workers)."""
    config = session.config
    while True:
        session.reconcile(group)  # interrupted trials and missing seeds wait again, so the group is not settled
        if session.settled(group):
            return
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, runner=session.candidates), _resources(config, session.base_costs, cluster.get("GPU", 0))
        )
        searcher = StudySearcher(session, group, heartbeat)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=_scheduler(config), num_samples=-1, max_concurrent_trials=concurrent_trials(config, cluster)
            ),
            run_config=tune.RunConfig(
                name=f"{config.name}-{group.name or 'main'}-{time.strftime('%Y%m%d-%H%M%S')}",
                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
                storage_path=str(config.run_dir / "ray"),
                failure_config=tune.FailureConfig(max_failures=RAY_TRIAL_RETRIES),
                verbose=0,
            ),
        )
        before = session.finished_count()
        tuner.fit()
        if searcher.trials:  # Tune returns early on Ctrl-C, leaving trials without an outcome
            searcher.abandon()
            raise KeyboardInterrupt
        searcher.time_latencies()
        if searcher.interrupted:  # the machine's fault: stop here, the next run runs those trials again
            raise MachineFault("; ".join(searcher.interrupted) + "; the next run runs them again")
        check_rejections(session, group)
        if session.finished_count() == before and not session.settled(group):
            session.wait(group)  # other workers' trials still run (or a dead worker's, until its heartbeat is stale)


def run_ray(session: StudySession, address: str | None) -> None:
    """Run each group with Ray Tuners, on a local Ray (this machine's CPUs) or the cluster at ``address``."""
    import ray

    # Rejected and failed trials report no objective metric; the record says what happened.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's loggers are the ones each Tuner is given: its TensorBoard files would show every
    # trial a second time, beside the trial's own (``scaling_lab.train.tracking``).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    started_here = not ray.is_initialized()
    quiet_ray()
    if started_here:
        try:
            ray.init(address=address, log_to_driver=False) if address else ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
        except ConnectionError as exc:
            raise ScalingLabError(f"--address {address!r}: cannot attach to a Ray cluster there ({exc}); start one with 'ray start --head'") from None
    try:
        cluster = ray.cluster_resources()
        with Heartbeat(session.storage) as heartbeat:
            while True:
                session.plan_ahead()  # a group's Tuner also runs the next groups' trials when it has free CPUs
                for group in session.config.groups:
                    _fit_group(session, group, heartbeat, cluster)
                if not session.plan_round():  # adaptive repeats: another round while comparisons are open
                    break
    finally:
        if started_here:
            ray.shutdown()
