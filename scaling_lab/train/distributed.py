"""Data-parallel trials: one trial trained by several processes (GPUs, machines) through Ray
Train's ``TorchTrainer`` (DDP; gloo on the CPU, NCCL on GPUs), whether the trial runs in a local
study, under Ray Tune, or from ``train --workers``.

The process that runs the trial (the caller) starts a ``TorchTrainer`` whose workers each run the
trainer's ``train`` on their share of every global batch (``Replicas``). Rank 0 sends each
validation's metrics to the caller and waits for its verdict: the caller calls the trial's
``report`` (Optuna's pruner, Ray Tune's scheduler) and answers go or stop; rank 0 hands the
answer to every rank, so a pruned trial ends on all of them after the same epoch. A divergence is
seen by every rank at once (they check the same summed loss). An error on one rank ends the
trial: Ray Train stops the other workers (they may be waiting for it in a collective) and the
caller raises that rank's error; a rank hung in a collective gives up after
``COLLECTIVE_TIMEOUT_S``. The trial is not retried by Ray Train: a study records it as failed
and goes on, and running the study again resumes it from its last checkpoint. When Ray Tune
stops the trial (its scheduler), the caller's process ends at once; the workers' placement group
is released first, so their CPUs and GPUs are free for the next trial.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from scaling_lab.errors import MachineFault, ScalingLabError
from scaling_lab.train.replicas import Replicas
from scaling_lab.trial import ReportCallback, Workers

# How long a rank waits in a collective operation (a peer that hangs, not one that fails: Ray
# Train ends the others at once when one fails) before the trial fails.
COLLECTIVE_TIMEOUT_S = 600
_GO, _STOP = "go", "stop"
_POLL_S = 0.2


class WorkerFailed(ScalingLabError):
    """A worker of a data-parallel trial raised or died; the message names the rank and its error."""


class WorkerLost(MachineFault):
    """A worker's process or machine died (killed by the out-of-memory killer, a lost node): a
    fault of the machine, so the trial is recorded as interrupted and resumed, not failed."""


class _Stopped(Exception):
    """The caller's report stopped the trial; every rank returns quietly."""


def ensure_ray(workers: Workers) -> None:
    """Attach to the running Ray (a study's ``ray`` backend, a test's cluster), or start a local
    one with this machine's CPUs (at least the workers' share) and GPUs."""
    import ray

    if ray.is_initialized():
        return
    cpus = max(os.cpu_count() or 1, math.ceil(workers.count * workers.cpus_per_worker))
    ray.init(num_cpus=cpus, log_to_driver=False, include_dashboard=False)


def _worker_loop(config: dict[str, Any]) -> None:
    """One worker of the trial (in a Ray Train worker process, its process group initialized)."""
    import ray.train.torch
    import ray.util

    replicas = Replicas.of_process_group()
    device = ray.train.torch.get_device() if config["gpus_per_worker"] else torch.device("cpu")
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    metrics, decisions = config["metrics"], config["decisions"]
    if replicas.is_main:
        metrics.put(("placed", ray.util.get_current_placement_group()))

    def report(epoch: int, values: dict[str, float]) -> None:
        decision = None
        if replicas.is_main:
            metrics.put(("validated", epoch, values))
            decision = decisions.get()
        if replicas.broadcast(decision) == _STOP:
            raise _Stopped

    try:
        trained = config["train"](report=report, device=device, replicas=replicas, **config["arguments"])
    except _Stopped:
        return
    if replicas.is_main:
        metrics.put(("trained", trained))


def run_on_workers(train: Callable[..., Any], arguments: dict[str, Any], workers: Workers, report: ReportCallback | None) -> Any:
    """Run ``train(report=..., device=..., replicas=..., **arguments)`` on ``workers`` through Ray
    Train and return rank 0's result; ``report`` runs here, between the workers' epochs."""
    import ray.util
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(workers)
    on_gpus = workers.gpus_per_worker > 0
    queue_options = {"num_cpus": 0}  # bookkeeping actors: they must not take a worker's CPU
    metrics, decisions = Queue(actor_options=queue_options), Queue(actor_options=queue_options)
    checkpoint_dir = arguments.get("checkpoint_dir")
    storage = Path(checkpoint_dir).resolve() / "ray-train" if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="scaling-lab-train-"))
    per_worker = {"CPU": workers.cpus_per_worker, **({"GPU": workers.gpus_per_worker} if on_gpus else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "train": train, "arguments": arguments, "metrics": metrics, "decisions": decisions,
            "cpus_per_worker": workers.cpus_per_worker, "gpus_per_worker": workers.gpus_per_worker,
        },
        scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=on_gpus, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if on_gpus else "gloo", timeout_s=COLLECTIVE_TIMEOUT_S),
        run_config=RunConfig(name=f"trial-{uuid.uuid4().hex[:8]}", storage_path=str(storage), failure_config=FailureConfig(max_failures=0)),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except TrainingFailedError as error:
            failure.append(error)

    fitting = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    fitting.start()
    trained, stopped_by, placement = None, None, None
    try:
        while fitting.is_alive() or not metrics.empty():
            try:
                message = metrics.get(timeout=_POLL_S)
            except Empty:
                continue
            if message[0] == "placed":
                placement = message[1]
                continue
            if message[0] == "trained":
                trained = message[1]
                continue
            _, epoch, values = message
            try:
                if report is not None:
                    report(epoch, values)
            except Exception as reason:  # noqa: BLE001 - pruned: every rank stops, then it propagates
                stopped_by = reason
            except BaseException:
                # Ray Tune stops a trial by ending its process (SystemExit here) at once: the Ray
                # Train controller dies with it, and its workers' placement group would hold their
                # CPUs and GPUs until the study ends. Released first thing, it ends the workers.
                if placement is not None:
                    ray.util.remove_placement_group(placement)
                raise
            decisions.put(_STOP if stopped_by is not None else _GO)
        fitting.join()
    finally:
        if checkpoint_dir is None:
            shutil.rmtree(storage, ignore_errors=True)
    if stopped_by is not None:
        raise stopped_by
    if failure:
        raise worker_failure(failure[0], workers.count) from None
    if trained is None:
        raise WorkerFailed(f"the {workers.count} workers of the trial ended without a result; see the Ray Train logs")
    return trained


def worker_failure(error: Exception, count: int) -> Exception:
    """The error a failed data-parallel trial raises: ``WorkerLost`` where a rank's process or
    machine died (the others then fail on the broken collective), else the failing rank's own
    ``ScalingLabError`` (say, ``TrainingDiverged``) as it is, anything else as ``WorkerFailed``
    naming the rank."""
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    failures: dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
    if not failures:
        return WorkerFailed(f"the data-parallel trial on {count} workers failed: {error}")
    # A RayTaskError wraps the worker's own exception; Ray Train's failed health check wraps the death of the worker's actor.
    causes = {rank: getattr(cause, "cause", None) or getattr(cause, "health_check_failure", None) or cause for rank, cause in sorted(failures.items())}
    for rank, cause in causes.items():
        if isinstance(cause, (RayActorError, WorkerCrashedError, NodeDiedError)):
            return WorkerLost(
                f"worker {rank} of {count} was lost: its process or machine died ({type(cause).__name__}); "
                "the trial is interrupted, and the next run resumes it from its last checkpoint"
            )
    rank, cause = next(iter(causes.items()))
    if isinstance(cause, ScalingLabError):
        return cause
    return WorkerFailed(f"worker {rank} of {count} failed: {type(cause).__name__}: {cause}")
