"""One candidate's life in a study: build its spec, measure it, check the constraints, train it.

Both backends run candidates through ``CandidateRunner``, so a (configuration, seed) trains the
same way locally and under Ray: the same spec, task, budget, seed and thread count (the study's
``resources.cpus``). Trials never time their own latency: trials that share a device would time
their neighbours' load too. The local backend times each candidate alone before it trains; the
Ray driver once its Tuner's trials have stopped (``latency_alone``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import optuna
import torch

from scaling_lab.errors import ScalingLabError, no_space_left
from scaling_lab.schema import BOOTSTRAP_COLUMN, MEASURED_COSTS, uncounted_text
from scaling_lab.spec import Spec
from scaling_lab.study import results
from scaling_lab.study.config import StudyConfig
from scaling_lab.study.search_space import InfeasibleCandidate, SearchSpace
from scaling_lab.train.mlflow_runs import MlflowTarget
from scaling_lab.train.tracking import TrialTracking
from scaling_lab.trial import Task, TrialFunction, takes_parameter

if TYPE_CHECKING:
    from scaling_lab.latency import Latency

# (epoch, metrics, record so far): called after each validation; may raise to stop the trial.
EpochHook = Callable[[int, Mapping[str, float], dict], None]


def default_trial_function() -> TrialFunction:
    from scaling_lab.train.trainer import run_trial

    return run_trial


def measured_costs(spec: Spec, base_costs: Mapping[str, float] | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """fvcore counts (cached on disk) and, given the base's, the FLOPs ratio; with the operators
    fvcore could not count (operator -> calls)."""
    from scaling_lab.measure import measure

    measured = measure(spec)
    costs: dict[str, float] = {cost: getattr(measured, cost) for cost in MEASURED_COSTS}
    if base_costs:
        costs["flops_ratio"] = measured.flops / base_costs["flops"]
    return costs, measured.uncounted_ops


def cost_counts(spec: Spec, base_costs: Mapping[str, float] | None = None) -> dict[str, float]:
    """``measured_costs`` without the uncounted operators."""
    return measured_costs(spec, base_costs)[0]


def unchecked_flops_constraint(space: SearchSpace, uncounted: Mapping[str, int]) -> str | None:
    """Why the space's FLOPs constraints cannot be trusted for a spec with these uncounted
    operators (one that may hide multiply-adds), or None."""
    from scaling_lab.measure import significant_uncounted

    significant = significant_uncounted(dict(uncounted))
    flops_constraints = [c.cost for c in space.constraints if c.cost.startswith("flops")]
    if not significant or not flops_constraints:
        return None
    return (
        f"the {' and '.join(flops_constraints)} constraint cannot be checked: fvcore has no FLOPs count for "
        f"{uncounted_text(significant)}, which may do multiply-adds; give the operator a handle in "
        "scaling_lab.measure.count or drop the constraint"
    )


def latency_alone(spec: Spec, task: Task) -> "Latency":
    """Batch-1 latency on this process's device, in the trial's precision, timed with nothing
    else running here (``latency.measure_latency``: median with its spread, cached per device,
    dtype and batch size; None as a figure when its repeats do not support one)."""
    from scaling_lab.latency import measure_latency, resolve_device
    from scaling_lab.train.precision import precision_for

    return measure_latency(spec, batch_size=1, dtype=precision_for(task, resolve_device(None)).dtype_name)


@contextlib.contextmanager
def torch_threads(count: float) -> Iterator[None]:
    """Run with ``count`` intra-op threads (a Ray worker gets its CPU share; so does a local trial)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Outcome:
    state: str  # complete, pruned, failed, rejected or interrupted (by the machine: no outcome, runs again)
    record: dict[str, Any]
    values: list[float] | None = None


@dataclass
class CandidateRunner:
    """One candidate's life: build the spec, measure it, check the constraints, train it."""

    config: StudyConfig
    base_costs: dict[str, float]
    trial_function: TrialFunction
    mlflow_run_id: str | None = None  # the study's MLflow run (``tracking: mlflow``)

    def checkpoint_dir(self, cid: str, seed: int) -> Path:
        return self.config.run_dir / "checkpoints" / f"{cid}-seed{seed}"

    def tracking(self, group: str, cid: str, seed: int, values: Mapping[str, Any]) -> TrialTracking:
        """Where the trial writes its curves: its TensorBoard run (and MLflow run), named by group,
        configuration and seed; its hyperparameters are its configuration's values, seed and group."""
        configuration = "/".join(part for part in (group, cid) if part)
        name = f"{configuration}-seed{seed}"
        mlflow = MlflowTarget(self.config.mlflow_uri, self.mlflow_run_id, name) if self.mlflow_run_id else None
        hyperparameters = {**values, "seed": seed, **({"group": group} if group else {})}
        return TrialTracking(self.config.tensorboard_dir / name, hyperparameters, configuration, mlflow)

    def run(
        self, space: SearchSpace, values: Mapping[str, Any], seed: int, cid: str, group: str, on_epoch: EpochHook, time_latency: bool
    ) -> Outcome:
        """Train one candidate of ``group``. ``time_latency``: time it here before training (only
        where nothing else runs on this device: the local backend); else ``latency_ms`` is left
        to the caller. A trial function that takes ``tracking`` is given the trial's."""
        started = time.time()
        record: dict[str, Any] = {"params": dict(values), "seed": seed, "started": results.now_iso(), "curve": [], "epochs_done": 0}

        def finish(state: str, error: str = "", objective_values: list[float] | None = None, trained_s: float = 0.0) -> Outcome:
            # A resumed trial's training time carries its earlier attempts (from the checkpoint):
            # the trial's wall time is never less, so a budget in trial-hours counts them too.
            record.update(state=state, error=error, finished=results.now_iso(), wall_time_s=round(max(time.time() - started, trained_s), 3))
            return Outcome(state, record, objective_values)

        try:
            spec = space.build_spec(self.config.base, values)
        except InfeasibleCandidate as exc:
            return finish("rejected", f"rejected: {exc}")
        except ScalingLabError as exc:
            return finish("failed", f"invalid configuration: {exc}")
        record.update(spec=spec.to_dict(), spec_hash=spec.spec_hash)
        try:
            record["costs"], record["uncounted_ops"] = measured_costs(spec, self.base_costs)
        except Exception as exc:  # noqa: BLE001 - a spec that cannot be measured (e.g. out of memory) fails alone
            return finish("failed", f"measuring failed: {type(exc).__name__}: {exc}")
        unchecked = unchecked_flops_constraint(space, record["uncounted_ops"])
        if unchecked:
            return finish("failed", unchecked)
        reason = space.violation(record["costs"], self.base_costs)
        if reason:
            return finish("rejected", f"rejected by constraint: {reason}")

        if time_latency:
            try:
                reason = self.record_latency(record, spec)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory while timing: this candidate fails alone
                reason = f"latency timing failed: {type(exc).__name__}: {exc}"
            if reason:
                return finish("failed", reason)

        def report(epoch: int, metrics: Mapping[str, float]) -> None:
            record["curve"].append({"epoch": epoch, **metrics})
            record["epochs_done"] = epoch
            on_epoch(epoch, metrics, record)

        task = replace(self.config.task, latency=False)
        workers = self.config.resources.trial_workers
        optional: dict[str, Any] = {}
        if workers.count > 1:
            optional["workers"] = workers  # one trial, several Ray Train workers
        if takes_parameter(self.trial_function, "tracking"):
            optional["tracking"] = self.tracking(group, cid, seed, values)
        try:
            with torch_threads(self.config.resources.cpus):
                result = self.trial_function(
                    spec, task, self.config.budget, report=report, seed=seed,
                    checkpoint_dir=self.checkpoint_dir(cid, seed), progress=False, **optional,
                )
        except optuna.TrialPruned:
            return finish("pruned", "stopped early by the pruner")
        except Exception as exc:  # noqa: BLE001 - any trial error (CUDA OOM, NaN loss) is recorded, the study goes on
            fault = no_space_left(exc, self.checkpoint_dir(cid, seed).parent)
            if fault is not None:  # the machine's fault, not the configuration's: the trial runs again
                return finish("interrupted", str(fault))
            return finish("failed", f"{type(exc).__name__}: {exc}")
        record.update(metrics=dict(result.metrics), curve=list(result.curve), epochs_done=self.config.budget.epochs)
        record[BOOTSTRAP_COLUMN] = dict(result.bootstrap)
        outcome = finish("complete", trained_s=result.wall_time_s)
        return self.with_objectives(outcome)

    def record_latency(self, record: dict[str, Any], spec: Spec) -> str | None:
        """Time the spec alone (when the study needs latency) into the record; the reason to fail
        the trial when latency is an objective and its timing gave no figure."""
        if not self.config.needs_latency:
            return None
        latency = latency_alone(spec, self.config.task)
        record["latency"] = latency.to_dict()
        record["costs"]["latency_ms"] = latency.batch1_ms
        if latency.batch1_ms is None and any(o.metric == "latency_ms" for o in self.config.objectives):
            return f"latency unstable, so not a figure (the device was busy?): {latency.batch1.describe()}; run again to time it again"
        return None

    def with_objectives(self, outcome: Outcome) -> Outcome:
        """The outcome with its objective values, or failed when one is missing or not finite
        (``latency_ms`` must be in the record's costs by now)."""
        record = outcome.record
        values = []
        for objective in self.config.objectives:
            value = record["metrics"].get(objective.metric, record["costs"].get(objective.metric))
            if value is None or not math.isfinite(value):
                record.update(state="failed", error=f"objective {objective.metric} is {value!r} (missing or not finite) in the trial's results")
                return Outcome("failed", record)
            values.append(float(value))
        return Outcome("complete", record, values)
