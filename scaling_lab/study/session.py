"""An opened study and one group's lifecycle, shared by the local and Ray backends.

Opening checks that the stored study has this file's definition (``fingerprint``). A group is
then planned, run and finished:

- ``plan_ahead`` (each round, without early stopping): ``reconcile`` for every grid group that
  takes no other group's winner, in one batch ordered for idle workers (see its docstring);
- ``reconcile``: under the study's planning lock, fail the trials of dead workers, enqueue
  interrupted trials again and the grid points and seeds not yet enqueued, so that every
  (configuration, seed) pair exists exactly once however many workers plan at the same moment;
- ``next_trial``: under the same lock, take a waiting trial, or sample a new configuration of a
  sampled group (tagged with its group, seed and configuration id before its other seeds are
  enqueued) while the group has fewer than planned;
- ``plan_round`` (adaptive repeats): once every planned trial has finished, under the same
  lock, one more seed for the configurations of comparisons still open; a round already
  planned (trials waiting or running) is never planned twice;
- ``settled``: no trial of the group waits or runs. A worker finishes a group by working and
  waiting until it is settled, so a later group's ``best`` parameters are resolved from the
  whole table, once (``best_values``), stored in the study and read by every worker.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any, TextIO

import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from scaling_lab.errors import ScalingLabError
from scaling_lab.study import results, storage
from scaling_lab.study.candidate import CandidateRunner, cost_counts, default_trial_function
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.fingerprint import check_same_definition, definition, definition_hash
from scaling_lab.study.run_folder import check_database, find_database
from scaling_lab.study.planning import ADAPTIVE_ATTR, GroupPlanning
from scaling_lab.study.search_space import SearchSpace
from scaling_lab.train.mlflow_runs import end_study_run, study_run
from scaling_lab.trial import TrialFunction

MAX_CONSECUTIVE_REJECTIONS = 100
MLFLOW_RUN_ATTR = "mlflow_run_id"
REASON_CHARS = 300  # the short failure reason shown in optuna-dashboard (the record can be cut there)


def _sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with the study's seed plus the number of trials so far, so that a
    resumed random search does not replay the same points. Grid points are enqueued, so any
    sampler serves them; random never samples past them."""
    seed = config.sampler.seed + offset
    if config.sampler.type in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    stopping = config.early_stopping
    if stopping.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=stopping.min_epochs, reduction_factor=stopping.reduction_factor)
    if stopping.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=stopping.min_epochs, max_resource=config.budget.epochs, reduction_factor=stopping.reduction_factor
        )
    if stopping.type == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=stopping.min_epochs)
    return optuna.pruners.NopPruner()


def optuna_state(outcome_state: str) -> TrialState:
    """How Optuna records an outcome: a rejected or pruned trial as pruned, an interrupted one
    (the machine's fault) as failed without a ``failed`` record, so that it runs again."""
    return {"complete": TrialState.COMPLETE, "failed": TrialState.FAIL, "interrupted": TrialState.FAIL}.get(outcome_state, TrialState.PRUNED)


def store_record(trial: optuna.Trial, record: dict[str, Any]) -> None:
    """The trial's full record, and its reason short enough for optuna-dashboard to show."""
    trial.set_user_attr("record", record)
    if record.get("error"):
        trial.set_user_attr("reason", str(record["error"])[:REASON_CHARS])


def tell_once(session: "StudySession", trial: optuna.Trial, record: dict[str, Any], values: list[float] | None, state: TrialState) -> bool:
    """Record and tell a trial's outcome. A trial failed meanwhile as stale (its heartbeats did
    not reach the database for the grace period) has been enqueued again: its outcome here is
    dropped with a note, not an error, and the re-run counts."""
    try:
        store_record(trial, record)
        session.study.tell(trial, values, state=state)
    except (UpdateFinishedTrialError, ValueError) as exc:
        if session.study._storage.get_trial(trial._trial_id).state.is_finished():
            if session.out is not None:
                print(f"[{session.config.name}] trial {trial.number} was failed as stale while it ran (heartbeats lost); its re-run counts", file=session.out)
            return True
        raise ScalingLabError(f"{session.config.study_file}: trial {trial.number} could not be recorded ({exc})") from None
    return True


class StudySession(GroupPlanning):
    """An opened study: storage, lock and results refresh, shared by both backends; planning
    its groups' trials is ``GroupPlanning``'s part."""

    def __init__(self, config: StudyConfig, trial_function: TrialFunction | None = None, out: TextIO | None = None, retry_failed: bool = False):
        self.config = config
        self.out = out
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_folder_lock() if storage.is_local(config.storage_url) else None
        try:
            self._open(trial_function)
            if retry_failed:
                self.retry_failed()
        except BaseException:
            self.close()  # a study that fails to open leaves its run folder unlocked
            raise

    def _open(self, trial_function: TrialFunction | None) -> None:
        config = self.config
        self._check_run_folder()
        self.storage = storage.open_storage(config.storage_url, config.study_file)
        directions = [o.direction for o in config.objectives]
        with storage.planning_lock(self.storage, config.name):
            existing = next((s for s in optuna.get_all_study_summaries(self.storage) if s.study_name == config.name), None)
            self.study = optuna.create_study(
                storage=self.storage, study_name=config.name, directions=directions, load_if_exists=True,
                sampler=_sampler(config, existing.n_trials if existing else 0), pruner=_pruner(config),
            )
            stored = [d.name.lower() for d in self.study.directions]
            if stored != directions:
                raise ScalingLabError(
                    f"{config.study_file}: objectives: the stored study {config.name!r} has directions {stored}, this file asks "
                    f"for {directions}; use another name or run folder (--run-dir) for different objectives"
                )
            self.definition = definition(config)
            attrs = self.study.user_attrs
            if "definition" in attrs:
                check_same_definition(attrs["definition"], self.definition, config.study_file, self._where())
            else:
                if existing is not None and existing.n_trials and self.out is not None:
                    print(f"[{config.name}] note: this study was made before definitions were stored; adopting this file's", file=self.out)
                self.study.set_user_attr("definition", self.definition)
                self.study.set_user_attr("created", attrs.get("created") or results.now_iso())
                self.study.set_user_attr("git_commit", results.git_commit(Path(config.study_file).parent))
            mlflow_run_id = self._mlflow_run() if config.tracking.kind == "mlflow" else None
        self.base_costs = cost_counts(config.base)
        self.candidates = CandidateRunner(config, self.base_costs, trial_function or default_trial_function(), mlflow_run_id)
        self._spaces: dict[str, SearchSpace] = {}
        if self._lock is not None:
            self._fail_running_trials()

    def _mlflow_run(self) -> str:
        """The study's MLflow run, made once and kept in the study (under the planning lock, so
        that workers opening the study together share one)."""
        config = self.config
        stored = self.study.user_attrs.get(MLFLOW_RUN_ATTR)
        artifacts = None if config.tracking.uri else (config.run_dir / "mlflow-artifacts").as_uri()
        run_id = study_run(config.mlflow_uri, config.name, stored, config.study_yaml, artifacts)
        if run_id != stored:
            self.study.set_user_attr(MLFLOW_RUN_ATTR, run_id)
        return run_id

    def _where(self) -> str:
        return str(self.config.run_dir) if storage.is_local(self.config.storage_url) else f"the study {self.config.name!r} of {storage.masked(self.config.storage_url)}"

    def _check_run_folder(self) -> None:
        """A run folder holds one study: its study.json must name this one; its own database
        file must be an Optuna study (or absent)."""
        if storage.is_local(self.config.storage_url):
            check_database(find_database(self.config.run_dir, self.config.storage_url))
        info_path = self.config.run_dir / "study.json"
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            return  # no record yet, or a damaged one that the next refresh rewrites from the storage
        if isinstance(info, dict) and info.get("name") not in (None, self.config.name):
            raise ScalingLabError(
                f"{self.config.study_file}: the run folder {self.config.run_dir} holds the study {info['name']!r}; "
                "give this study its own run folder (--run-dir DIR)"
            )
        stored = info.get("definition_hash") if isinstance(info, dict) else None
        if stored and storage.is_local(self.config.storage_url) and stored != definition_hash(definition(self.config)):
            check_same_definition(info.get("definition") or {}, definition(self.config), self.config.study_file, str(self.config.run_dir))

    def _acquire_folder_lock(self):
        handle = open(self.config.run_dir / ".lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ScalingLabError(
                f"{self.config.run_dir}: another scaling-lab run is using this run folder; its {self.config.storage_url.split(':')[0]} "
                "storage allows one writer. Wait for it, or give several workers a shared database (storage: postgresql://...)"
            ) from None
        return handle

    def _fail_running_trials(self) -> None:
        """With the run folder locked, any running trial was left by a run that died."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(trial.number, state=TrialState.FAIL)

    def retry_failed(self) -> None:
        """Enqueue every failed trial again (``run --retry-failed``), with its parameters, seed
        and checkpoint folder; its retry stands for it in the results (``results.retried``).
        A later group's best values, once decided, stay as they were decided."""
        with storage.planning_lock(self.storage, self.config.name):
            trials = self.study.get_trials(deepcopy=False)
            superseded = results.retried(trials)
            failed = [t for t in trials if results.trial_state(t) == "failed" and t.number not in superseded and "config_id" in t.user_attrs]
            for trial in failed:
                tags = {k: trial.user_attrs[k] for k in ("group", "seed", "config_id")}
                self.study.enqueue_trial(dict(trial.params), user_attrs={**tags, "retry_of": trial.number})
        if self.out is not None:
            print(f"[{self.config.name}] --retry-failed: {len(failed)} failed trial(s) enqueued again", file=self.out, flush=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def finished_count(self) -> int:
        """Trials with an outcome (complete, pruned, failed or rejected)."""
        return sum(results.trial_state(t) not in (None, "running") for t in self.study.get_trials(deepcopy=False))

    # --- results ----------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        return results.results_frame(self.study.get_trials(deepcopy=False), self.config.task.kind)

    def info(self, finished: bool = False) -> dict[str, Any]:
        """What ``study.json`` records (and what the report's comparisons are decided from)."""
        info = results.study_info(self.config, self.study, self.planned_total, finished)
        info.update(
            definition=self.definition, definition_hash=definition_hash(self.definition), seeds=list(self.config.seeds), base_costs=self.base_costs,
            repeats=self.config.repeat_plan.to_dict(), adaptive_repeats=self.study.user_attrs.get(ADAPTIVE_ATTR),
        )
        return info

    def refresh(self, finished: bool = False) -> pd.DataFrame:
        frame = self.table()
        results.write_run_folder(self.study, self.config.run_dir, frame, self.info(finished))
        if self.out is not None:
            print(results.progress_line(frame, self.planned_total, self.config), file=self.out, flush=True)
        return frame

    def is_finished(self) -> bool:
        return all(self.settled(g) for g in self.config.groups)

    def finish(self) -> None:
        """The study has run every planned trial: its MLflow run ends as finished."""
        if self.candidates.mlflow_run_id is not None:
            end_study_run(self.config.mlflow_uri, self.candidates.mlflow_run_id)


def check_rejections(session: StudySession, group: Group) -> None:
    """A sampled group whose last candidates were all rejected is searching where its
    constraint never holds; a grid runs every planned point, rejected or not."""
    if group.trials is not None and session.consecutive_rejections(group) >= MAX_CONSECUTIVE_REJECTIONS:
        raise ScalingLabError(
            f"{group.space.source}: constraints: the last {MAX_CONSECUTIVE_REJECTIONS} sampled candidates were all "
            "rejected; widen the constraint's range or narrow the parameters to where it holds"
        )
