"""Running a study: the ``local`` backend, where trials run one at a time in this process
(Optuna's pruners stop weak ones), and ``run_study``, which opens the study and hands it to the
chosen backend.

Resuming is the same command again: trials with an outcome are kept; trials that stopped without
one (Ctrl-C, kill -9, a lost worker) are enqueued again with their parameters and seed, and
train from their checkpoint folder (one per configuration and seed) when the trainer left one.
Several workers may run one study on a shared database; see ``session`` for what they share.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, TextIO

import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from scaling_lab.errors import MachineFault, ScalingLabError
from scaling_lab.files import read_parquet
from scaling_lab.study.candidate import Outcome
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.session import StudySession, check_rejections, optuna_state, tell_once
from scaling_lab.study.storage import Heartbeat
from scaling_lab.trial import TrialFunction, takes_parameter, trial_function_problems

def _run_one(session: StudySession, trial: optuna.Trial, space: Any, values: dict[str, Any], seed: int, cid: str, group: str) -> Outcome:
    """Train one trial here, with heartbeats, and tell the study its outcome."""
    pruning = session.config.early_stopping.type != "none"
    metric = session.config.objectives[0].metric

    def on_epoch(epoch: int, metrics: Mapping[str, float], record: dict) -> None:
        trial.set_user_attr("record", record)
        if pruning and metric in metrics:
            trial.report(float(metrics[metric]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    told = False
    try:
        with Heartbeat(session.storage, [trial._trial_id]):
            outcome = session.candidates.run(space, values, seed, cid, group, on_epoch, time_latency=True)
        told = tell_once(session, trial, outcome.record, outcome.values, optuna_state(outcome.state))
    finally:
        if not told:  # interrupted (Ctrl-C): no record state, so the next plan enqueues it again
            with contextlib.suppress(UpdateFinishedTrialError, ValueError):
                session.study.tell(trial, state=TrialState.FAIL)
    return outcome


def work_through(session: StudySession, group: Group) -> None:
    """Run this group's trials until it is settled, waiting for other workers' trials (and
    running those of workers that died) rather than moving on while they run."""
    session.reconcile(group)
    while True:
        started = session.next_trial(group)
        if started is None:
            session.reconcile(group)  # interrupted trials and missing seeds wait again, so the group is not settled
            if session.settled(group):
                return
            session.wait(group)
            continue
        trial, trial_group, space, values, seed, cid = started
        outcome = _run_one(session, trial, space, values, seed, cid, trial_group.name)
        session.refresh()
        if outcome.state == "interrupted":  # the machine's fault: stop here, the next run runs it again
            raise MachineFault(f"{outcome.record['error']} (trial {trial.number})")
        check_rejections(session, trial_group)


def run_local(session: StudySession) -> None:
    """Optuna in this process, one trial at a time, group after group (and round after round of
    adaptive repeats); the planned trials of groups that take no other group's winner are
    enqueued first, so another worker's idle process may take them (``plan_ahead``)."""
    while True:
        session.plan_ahead()
        for group in session.config.groups:
            work_through(session, group)
        if not session.plan_round():  # adaptive repeats: another round while comparisons are open
            return


def with_data_classes(config: StudyConfig) -> StudyConfig:
    """The study with its base spec's ``num_classes`` set to the data's: the trainer trains that
    head, so costs are measured (and constraints checked) on the model that is trained."""
    from scaling_lab.data.selection import load_datasets

    classes = load_datasets(config.task)[0].num_classes
    if config.base.num_classes == classes:
        return config
    return replace(config, base=config.base.replace(num_classes=classes))


def run_study(
    config: StudyConfig,
    backend: str | None = None,
    address: str | None = None,
    trial_function: TrialFunction | None = None,
    out: TextIO | None = sys.stdout,
    retry_failed: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a study to its planned end and return its results table.

    ``trial_function`` defaults to ``scaling_lab.train.trainer.run_trial``; ``backend`` and
    ``address`` override the study file's backend and attach Ray to a running cluster;
    ``retry_failed`` runs the failed trials again (``StudySession.retry_failed``).
    """
    backend = backend or config.backend
    if address and backend != "ray":
        raise ScalingLabError(f"--address {address!r} attaches to a Ray cluster; it needs --backend ray")
    if address and address.startswith("ray://"):
        raise ScalingLabError(
            f"--address {address!r}: the Ray client cannot run the study's driver (it plans and records trials); "
            "run scaling-lab on a node of the cluster with --address auto or HOST:PORT"
        )
    problems = trial_function_problems(trial_function) if trial_function is not None else []
    if problems:
        raise ScalingLabError(
            f"trial_function {getattr(trial_function, '__name__', trial_function)!r}: {'; '.join(problems)}; "
            "it must take the parameters of scaling_lab.trial.TrialFunction"
        )
    if config.resources.workers > 1 and trial_function is not None and not takes_parameter(trial_function, "workers"):
        raise ScalingLabError(
            f"resources.workers {config.resources.workers}: trial_function {getattr(trial_function, '__name__', trial_function)!r} "
            "takes no parameter 'workers'; data-parallel trials need scaling_lab.train.run_trial (or a function with its workers parameter)"
        )
    config = with_data_classes(config)
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress lines say what happened to each trial
    session = StudySession(config, trial_function, out, retry_failed)
    try:
        session.refresh()
        if backend == "ray":
            from scaling_lab.study.ray_backend import run_ray

            run_ray(session, address)
        else:
            run_local(session)
        finished = session.is_finished()
        if finished:
            session.finish()
        return session.refresh(finished=finished)
    finally:
        session.close()
        optuna.logging.set_verbosity(previous_verbosity)


def open_results(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A run folder's ``study.json`` and results table (as written after the last trial)."""
    info_path = run_dir / "study.json"
    if not info_path.is_file():
        raise ScalingLabError(f"{run_dir}: no study.json yet; run the study first (scaling-lab run STUDY.yaml)")
    try:
        info = json.loads(info_path.read_text())
        missing = [key for key in ("name", "objectives", "planned_trials", "finished") if key not in info]
    except (ValueError, TypeError) as exc:
        raise ScalingLabError(f"{info_path}: not a study record ({exc}); run the study again to rewrite it") from None
    if missing:
        raise ScalingLabError(f"{info_path}: missing key(s) {', '.join(missing)}; run the study again to rewrite it")
    table_path = run_dir / "results.parquet"
    try:
        frame = read_parquet(table_path) if table_path.is_file() else pd.DataFrame()
    except (OSError, ValueError) as exc:
        raise ScalingLabError(f"{table_path}: unreadable ({exc}); run the study again to rebuild it from its storage") from None
    return info, frame


__all__ = ["StudySession", "open_results", "run_local", "run_study", "work_through"]
