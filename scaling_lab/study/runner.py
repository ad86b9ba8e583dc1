"""Running a study: the Optuna study and its storage, the plan (grid points, seeds, interrupted
trials to run again), one candidate's life (build, measure, constrain, train) and the ``local``
backend, where Optuna drives trials in this process with its pruners.

Resuming is the same command again: trials with an outcome are kept; trials that stopped without
one (Ctrl-C, kill -9, a lost worker) are enqueued again with their parameters and seed, and
train from their checkpoint folder (one per configuration and seed) when the trainer left one.
"""

from __future__ import annotations


import fcntl
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TextIO

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from scaling_lab.errors import ScalingLabError
from scaling_lab.spec import Spec
from scaling_lab.study import results
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.search_space import InfeasibleCandidate, SearchSpace, config_id
from scaling_lab.trial import TrialResult

if TYPE_CHECKING:
    from scaling_lab.measure import Latency

TrialFunction = Callable[..., TrialResult]
# (epoch, metrics, record so far): called after each validation; may raise to stop the trial.
EpochHook = Callable[[int, Mapping[str, float], dict], None]
MAX_CONSECUTIVE_REJECTIONS = 100
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S = 30, 120
LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


class TrialFailed(Exception):
    """A trial that raised or returned unusable metrics; recorded as failed, the study goes on."""


def default_trial_function() -> TrialFunction:
    from scaling_lab.train.trainer import run_trial

    return run_trial


def cost_counts(spec: Spec, base_costs: Mapping[str, float] | None = None) -> dict[str, float]:
    """fvcore counts (cached on disk) and, given the base's, the FLOPs ratio."""
    from scaling_lab.measure import measure

    measured = measure(spec)
    costs: dict[str, float] = {
        "params": measured.params,
        "flops": measured.flops,
        "flops_elementwise": measured.flops_elementwise,
        "activations": measured.activations,
    }
    if base_costs:
        costs["flops_ratio"] = measured.flops / base_costs["flops"]
    return costs


@dataclass
class Outcome:
    state: str  # complete, pruned, failed or rejected
    record: dict[str, Any]
    values: list[float] | None = None


@dataclass
class CandidateRunner:
    """One candidate's life: build the spec, measure it, check the constraints, train it."""

    config: StudyConfig
    base_costs: dict[str, float]
    trial_function: TrialFunction

    def checkpoint_dir(self, cid: str, seed: int) -> Path:
        return self.config.run_dir / "checkpoints" / f"{cid}-seed{seed}"

    def run(
        self, space: SearchSpace, values: Mapping[str, Any], seed: int, cid: str, on_epoch: EpochHook, latency: Latency | None = None
    ) -> Outcome:
        """``latency``: the spec's latency as the driver timed it (``measure_latency``); without
        it, a study that needs latency times it here, before training, which is right only where
        this runner is the driver running one trial at a time (the local backend)."""
        started = time.time()
        record: dict[str, Any] = {"params": dict(values), "seed": seed, "started": results.now_iso(), "curve": [], "epochs_done": 0}

        def finish(state: str, error: str = "", objective_values: list[float] | None = None) -> Outcome:
            record.update(state=state, error=error, finished=results.now_iso(), wall_time_s=round(time.time() - started, 3))
            return Outcome(state, record, objective_values)

        try:
            spec = space.build_spec(self.config.base, values)
        except InfeasibleCandidate as exc:
            return finish("rejected", f"rejected: {exc}")
        except ScalingLabError as exc:
            return finish("failed", f"invalid configuration: {exc}")
        record.update(spec=spec.to_dict(), spec_hash=spec.spec_hash)
        try:
            record["costs"] = cost_counts(spec, self.base_costs)
        except Exception as exc:  # noqa: BLE001 - a spec that cannot be measured (e.g. out of memory) fails alone
            return finish("failed", f"measuring failed: {type(exc).__name__}: {exc}")
        reason = space.violation(record["costs"], self.base_costs)
        if reason:
            return finish("rejected", f"rejected by constraint: {reason}")
        if self.config.needs_latency:
            from scaling_lab.measure import measure_latency

            latency = latency or measure_latency(spec)
            record["latency"] = latency.to_dict()
            record["costs"]["latency_ms"] = latency.batch1_ms
            if latency.batch1_ms is None and any(o.metric == "latency_ms" for o in self.config.objectives):
                return finish("failed", f"latency unstable, so not a figure (the device was busy?): {latency.batch1.describe()}; run again to time it again")

        def report(epoch: int, metrics: Mapping[str, float]) -> None:
            record["curve"].append({"epoch": epoch, **metrics})
            record["epochs_done"] = epoch
            on_epoch(epoch, metrics, record)

        try:
            # Trials may share a device (Ray, gpus: auto), so they never time themselves.
            result = self.trial_function(
                spec, replace(self.config.task, latency=False), self.config.budget, report=report, seed=seed,
                checkpoint_dir=self.checkpoint_dir(cid, seed), progress=False,
            )
        except optuna.TrialPruned:
            return finish("pruned", "stopped early by the pruner")
        except Exception as exc:  # noqa: BLE001 - any trial error (CUDA OOM, NaN loss) is recorded, the study goes on
            return finish("failed", f"{type(exc).__name__}: {exc}")
        record.update(metrics=dict(result.metrics), curve=list(result.curve), epochs_done=self.config.budget.epochs)
        objective_values = []
        for objective in self.config.objectives:
            value = result.metrics.get(objective.metric, record["costs"].get(objective.metric))
            if value is None or not math.isfinite(value):
                return finish("failed", f"objective {objective.metric} is {value!r} (missing or not finite) in the trial's results")
            objective_values.append(float(value))
        return finish("complete", "", objective_values)


def _optuna_sampler(config: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with the study's seed plus the number of trials so far, so that a
    resumed random search does not replay the same points. Grid points are enqueued, so any
    sampler serves them; random never samples past them."""
    seed = config.sampler.seed + offset
    if config.sampler.type in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _optuna_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
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


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue an interrupted trial again with its parameters, group and seed."""
    attrs = {key: trial.user_attrs[key] for key in ("group", "seed", "config_id") if key in trial.user_attrs}
    if "config_id" in attrs:
        study.enqueue_trial(trial.params, user_attrs=attrs)


def open_storage(config: StudyConfig, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage. On a shared database, trials send heartbeats (when run through
    ``study.optimize``) so that trials of a dead worker are failed and enqueued again."""
    url = config.storage_url
    try:
        if url.startswith("journal:///"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:///") - 1 :]))
        if config.storage_is_local or not heartbeat:
            return optuna.storages.RDBStorage(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S, heartbeat_stale_trial_callback=requeue
            )
    except ModuleNotFoundError as exc:
        raise ScalingLabError(f"{config.study_file}: storage {url!r} needs the database driver {exc.name!r}; install it (pip install 'scaling-lab[postgres]')") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise ScalingLabError(f"{config.study_file}: storage {url!r} cannot be opened ({type(exc).__name__}: {exc}); give sqlite, journal or a reachable SQLAlchemy URL") from None


class StudySession:
    """An opened study: storage, lock, plan and results refresh, shared by both backends."""

    def __init__(self, config: StudyConfig, trial_function: TrialFunction | None = None, out: TextIO | None = None):
        self.config = config
        self.out = out
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock() if config.storage_is_local else None
        try:
            self._open(config, trial_function)
        except BaseException:
            self.close()  # a study that fails to open leaves its run folder unlocked
            raise

    def _open(self, config: StudyConfig, trial_function: TrialFunction | None) -> None:
        storage = open_storage(config)
        directions = [o.direction for o in config.objectives]
        existing = next((s for s in optuna.get_all_study_summaries(storage) if s.study_name == config.name), None)
        offset = existing.n_trials if existing else 0
        self.study = optuna.create_study(
            storage=storage, study_name=config.name, directions=directions, load_if_exists=True,
            sampler=_optuna_sampler(config, offset), pruner=_optuna_pruner(config),
        )
        stored = [d.name.lower() for d in self.study.directions]
        if stored != directions:
            raise ScalingLabError(
                f"{config.study_file}: objectives: the stored study {config.name!r} has directions {stored}, this file asks "
                f"for {directions}; use another name or run folder (--run-dir) for different objectives"
            )
        self.study.set_user_attr("created", self.study.user_attrs.get("created") or results.now_iso())
        if "git_commit" not in self.study.user_attrs:
            self.study.set_user_attr("git_commit", results.git_commit(Path(config.study_file).parent))
        self.base_costs = cost_counts(config.base)
        self.candidates = CandidateRunner(config, self.base_costs, trial_function or default_trial_function())
        self._spaces: dict[str, SearchSpace] = {}
        if self._lock is not None:
            self._fail_running_trials()

    def _acquire_lock(self):
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

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- the plan ---------------------------------------------------------------------------

    def group(self, name: str) -> Group:
        return next(g for g in self.config.groups if g.name == name)

    @staticmethod
    def prefix(group: Group) -> str:
        """Optuna parameter names carry the group, so groups may give a name different ranges."""
        return f"{group.name}:" if group.name else ""

    def space(self, group: Group) -> SearchSpace:
        """The group's space with ``best`` parameters fixed to the referenced group's best values."""
        if group.name not in self._spaces:
            references = group.space.best_references
            values = {name: self.best_params(source)[name] for name, source in references.items()}
            self._spaces[group.name] = group.space.resolve_best(values) if references else group.space
        return self._spaces[group.name]

    def best_params(self, group_name: str) -> dict[str, Any]:
        """Parameters of the group's best configuration by the first objective, averaged over seeds."""
        frame = self.table()
        objective = self.config.objectives[0]
        done = frame[(frame["group"] == group_name) & (frame["state"] == "complete")] if not frame.empty else frame
        if done.empty:
            raise ScalingLabError(
                f"{self.config.study_file}: group {group_name!r} has no complete trial, so its best values cannot be used; "
                "check its failures with scaling-lab status"
            )
        means = done.groupby("config_id")[objective.metric].mean()
        best = means.idxmax() if objective.direction == "maximize" else means.idxmin()
        row = done[done["config_id"] == best].iloc[0]
        return {column[len("param."):]: row[column] for column in done.columns if column.startswith("param.") and pd.notna(row[column])}

    def planned_for(self, group: Group) -> int:
        if group.trials is not None:
            return group.trials * len(self.config.seeds)
        return group.space.grid_size() * len(self.config.seeds)

    @property
    def planned_total(self) -> int:
        return sum(self.planned_for(g) for g in self.config.groups)

    def live_keys(self) -> set[tuple[str, int]]:
        return {
            (t.user_attrs["config_id"], t.user_attrs.get("seed", 0))
            for t in self.study.get_trials(deepcopy=False, states=LIVE_STATES)
            if "config_id" in t.user_attrs and not results.is_interrupted(t)
        }

    def prepare(self, group: Group) -> None:
        """Enqueue what this group still needs: its interrupted trials again, and missing grid
        points (each grid point's costs checked first, so an infeasible constraint stops the run)."""
        live = self.live_keys()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            key = (trial.user_attrs.get("config_id"), trial.user_attrs.get("seed", 0))
            if trial.user_attrs.get("group") == group.name and results.is_interrupted(trial) and key[0] is not None and key not in live:
                requeue(self.study, trial)
                live.add(key)
        if group.trials is not None:
            return
        space = self.space(group)
        points = space.grid()
        self._check_feasible(space, group, points)
        prefix = self.prefix(group)
        for values in points:
            cid = config_id(group.name, values)
            for seed in self.config.seeds:
                if (cid, seed) not in live:
                    self.study.enqueue_trial(
                        space.optuna_params(values, prefix), user_attrs={"group": group.name, "seed": seed, "config_id": cid}
                    )

    def _check_feasible(self, space: SearchSpace, group: Group, points: list[dict[str, Any]]) -> None:
        """Every grid point must make a valid spec (a bad value is an error before anything
        trains), and with constraints at least one must meet them."""
        specs = []
        for values in points:
            try:
                specs.append(space.build_spec(self.config.base, values))
            except InfeasibleCandidate:
                continue
            except ScalingLabError as exc:
                raise ScalingLabError(f"{space.source}: parameters {dict(values)}: {exc}") from None
        if not space.constraints:
            return
        ratios = []
        for spec in specs:
            costs = cost_counts(spec, self.base_costs)
            if space.violation(costs, self.base_costs) is None:
                return
            ratios.append(costs["flops_ratio"])
        raise ScalingLabError(
            f"{space.source}: constraints: every one of the {len(points)} candidates of group {group.name or 'main'!r} breaks "
            f"them (measured FLOPs {min(ratios, default=0):.3g}x to {max(ratios, default=0):.3g}x the base); widen the constraint's range or change the parameters"
        )

    def remaining(self, group: Group) -> int:
        """Trials still to start for this group (waiting ones included)."""
        trials = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if group.trials is None:
            return waiting
        counted = sum(
            1 for t in trials
            if t.user_attrs.get("group") == group.name and results.trial_state(t) in ("complete", "pruned", "failed", "running")
        )
        return max(waiting, self.planned_for(group) - counted)

    def finished_count(self) -> int:
        """Trials with an outcome (complete, pruned, failed or rejected)."""
        return sum(results.trial_state(t) not in (None, "running") for t in self.study.get_trials(deepcopy=False))

    def consecutive_rejections(self) -> int:
        count = 0
        for trial in reversed(self.study.get_trials(deepcopy=False)):
            state = results.trial_state(trial)
            if state is None or state == "running":
                continue
            if state != "rejected":
                break
            count += 1
        return count

    def start_values(self, trial: Any, current: Group) -> tuple[Group, SearchSpace, dict[str, Any], int, str]:
        """Suggest one trial's values. A freshly sampled configuration (no seed yet) gets seed 0
        here and its other seeds enqueued, sharing its parameters."""
        group = self.group(trial.user_attrs.get("group", current.name))
        space = self.space(group)
        values = space.suggest(trial, self.prefix(group), grid=self.config.sampler.type == "grid")
        cid = config_id(group.name, values)
        seed = trial.user_attrs.get("seed")
        if seed is None:
            seed = self.config.seeds[0]
            for other in self.config.seeds[1:]:
                self.study.enqueue_trial(dict(trial.params), user_attrs={"group": group.name, "seed": other, "config_id": cid})
        for key, value in (("group", group.name), ("seed", seed), ("config_id", cid)):
            trial.set_user_attr(key, value)
        return group, space, values, seed, cid

    # --- results ----------------------------------------------------------------------------

    def table(self) -> pd.DataFrame:
        return results.results_frame(self.study.get_trials(deepcopy=False), self.config.task.kind)

    def refresh(self, finished: bool = False) -> pd.DataFrame:
        frame = results.refresh(self.config, self.study, self.planned_total, finished)
        if self.out is not None:
            print(progress_line(frame, self.planned_total, self.config), file=self.out, flush=True)
        return frame

    def is_finished(self) -> bool:
        return all(self.remaining(g) == 0 for g in self.config.groups) and not any(
            t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False)
        )


def progress_line(frame: pd.DataFrame, planned: int, config: StudyConfig) -> str:
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    done = sum(counts.get(s, 0) for s in ("complete", "pruned", "failed", "rejected"))
    line = (
        f"[{config.name}] {done}/{planned} done: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed, {counts.get('rejected', 0)} rejected; {counts.get('running', 0)} running"
    )
    best = best_trials(frame, config, 1)
    if not best.empty:
        objective = config.objectives[0]
        line += f"; best {objective.metric} {best.iloc[0][objective.metric]:.4g} (trial {int(best.iloc[0]['trial_id'])})"
    return line


def best_trials(frame: pd.DataFrame, config: StudyConfig, count: int = 5) -> pd.DataFrame:
    """Complete trials ranked by the first objective."""
    if frame.empty:
        return frame
    objective = config.objectives[0]
    done = frame[frame["state"] == "complete"]
    if objective.metric not in done.columns or done.empty:
        return done.head(0)
    return done.sort_values(objective.metric, ascending=objective.direction == "minimize").head(count)


def _local_objective(session: StudySession, current: Group) -> Callable[[optuna.Trial], list[float]]:
    pruning = session.config.early_stopping.type != "none"
    metric = session.config.objectives[0].metric

    def objective(trial: optuna.Trial) -> list[float]:
        group, space, values, seed, cid = session.start_values(trial, current)

        def on_epoch(epoch: int, metrics: Mapping[str, float], record: dict) -> None:
            trial.set_user_attr("record", record)
            if pruning and metric in metrics:
                trial.report(float(metrics[metric]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        outcome = session.candidates.run(space, values, seed, cid, on_epoch)
        trial.set_user_attr("record", outcome.record)
        if outcome.state == "complete":
            return outcome.values
        if outcome.state == "failed":
            raise TrialFailed(outcome.record["error"])
        raise optuna.TrialPruned(outcome.record["error"])

    return objective


def run_local(session: StudySession) -> None:
    """Optuna in this process, one trial at a time, group after group."""
    for group in session.config.groups:
        session.prepare(group)
        objective = _local_objective(session, group)
        while session.remaining(group) > 0:
            session.study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            session.refresh()
            if session.consecutive_rejections() >= MAX_CONSECUTIVE_REJECTIONS:
                raise ScalingLabError(
                    f"{group.space.source}: constraints: the last {MAX_CONSECUTIVE_REJECTIONS} sampled candidates were all "
                    "rejected; widen the constraint's range or narrow the parameters to where it holds"
                )


def with_data_classes(config: StudyConfig) -> StudyConfig:
    """The study with its base spec's ``num_classes`` set to the data's: the trainer trains that
    head, so costs are measured (and constraints checked) on the model that is trained."""
    from scaling_lab.train.trainer import load_datasets

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
) -> pd.DataFrame:
    """Run (or resume) a study to its planned end and return its results table.

    ``trial_function`` defaults to ``scaling_lab.train.trainer.run_trial``; ``backend`` and
    ``address`` override the study file's backend and attach Ray to a running cluster.
    """
    backend = backend or config.backend
    if address and backend != "ray":
        raise ScalingLabError(f"--address {address!r} attaches to a Ray cluster; it needs --backend ray")
    if trial_function is None:
        config = with_data_classes(config)
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress lines say what happened to each trial
    session = StudySession(config, trial_function, out)
    try:
        session.refresh()
        if backend == "ray":
            from scaling_lab.study.ray_backend import run_ray

            run_ray(session, address)
        else:
            run_local(session)
        return session.refresh(finished=session.is_finished())
    finally:
        session.close()
        optuna.logging.set_verbosity(previous_verbosity)


def open_results(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A run folder's ``study.json`` and results table (as written after the last trial)."""
    import json

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
        frame = pd.read_parquet(table_path) if table_path.is_file() else pd.DataFrame()
    except (OSError, ValueError) as exc:
        raise ScalingLabError(f"{table_path}: unreadable ({exc}); run the study again to rebuild it from its storage") from None
    return info, frame


__all__ = ["CandidateRunner", "StudySession", "TrialFailed", "best_trials", "open_results", "run_local", "run_study"]
