"""Planning a study's groups: the half of ``StudySession`` that decides which trials exist and
which runs next (see ``scaling_lab.study.session`` for the lifecycle it serves).

Every planning step runs under the study's planning lock, so that several workers planning at the
same moment make every (configuration, seed) pair exactly once.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from scaling_lab import decisions
from scaling_lab.errors import ScalingLabError
from scaling_lab.study import adaptive, results, storage
from scaling_lab.study.candidate import cost_counts
from scaling_lab.study.config import Group, StudyConfig
from scaling_lab.study.search_space import InfeasibleCandidate, SearchSpace, config_id
from scaling_lab.study.winner import WinnerRule, decide_winner, plain

LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
POLL_S = 2.0  # how often a worker waiting for others' trials looks again
TAGS = ("group", "seed", "config_id", "retry_of")  # a trial's place in the plan, kept when it is enqueued again
PLANNING_PROGRESS_EVERY = 1000  # enqueued trials between progress lines of a long plan
MAX_DUPLICATE_SAMPLES = 100  # fresh samples in a row of configurations the group already has
ADAPTIVE_ATTR = "adaptive_repeats"  # the last look of adaptive repeats: stop reason, open comparisons, rounds


class Planned(NamedTuple):
    """A trial to enqueue: its group, Optuna parameters, configuration id and seed; the tags of
    the interrupted trial it runs again, or the values of the grid point it is."""

    group: Group
    params: dict[str, Any]
    config_id: str
    seed: int
    tags: dict[str, Any] | None = None
    values: dict[str, Any] | None = None


class GroupPlanning:
    """Planning methods of an opened study. They use what ``StudySession`` opens: ``config``,
    ``study``, ``storage``, ``out``, ``base_costs``, the cache ``_spaces`` and ``table()``/``info()``."""

    config: StudyConfig
    study: optuna.Study
    storage: Any
    out: Any
    base_costs: dict[str, float]
    _spaces: dict[str, SearchSpace]

    if TYPE_CHECKING:

        def table(self) -> pd.DataFrame: ...

        def info(self, finished: bool = False) -> dict[str, Any]: ...

    def group(self, name: str) -> Group:
        return next(g for g in self.config.groups if g.name == name)

    @staticmethod
    def prefix(group: Group) -> str:
        """Optuna parameter names carry the group, so groups may give a name different ranges."""
        return f"{group.name}:" if group.name else ""

    def winner_rule(self, group: Group) -> WinnerRule:
        objective = self.config.objectives[0]
        return WinnerRule(objective.metric, objective.direction, len(self.config.seeds), group.space.constraints, self.base_costs)

    def space(self, group: Group) -> SearchSpace:
        """The group's space with ``best`` parameters fixed to the referenced groups' winners."""
        if group.name not in self._spaces:
            references = group.space.best_references
            values = {name: self.best_values(source)[name] for name, source in references.items()}
            self._spaces[group.name] = group.space.resolve_best(values) if references else group.space
        return self._spaces[group.name]

    def best_values(self, group_name: str) -> dict[str, Any]:
        """The winning parameters of a settled group, decided once and stored in the study."""
        key = f"best:{group_name}"
        stored = self.study.user_attrs.get(key)
        if stored is None:
            group = self.group(group_name)
            if not self.settled(group):
                raise ScalingLabError(f"{self.config.study_file}: group {group_name!r} still has trials to run; its best values are decided when it is finished")
            with storage.planning_lock(self.storage, self.config.name):
                stored = self.study.user_attrs.get(key)
                if stored is None:
                    winner = decide_winner(self.table(), group_name, self.winner_rule(group), self.config.study_file)
                    ran = next(  # the values as the trials ran them (a table column may have changed their type)
                        (t.user_attrs["record"]["params"] for t in self._group_trials(group)
                         if t.user_attrs.get("config_id") == winner.config_id and "params" in t.user_attrs.get("record", {})),
                        winner.values,
                    )
                    stored = {"config_id": winner.config_id, "score": winner.score, "values": {k: plain(v) for k, v in ran.items()}}
                    self.study.set_user_attr(key, stored)
        return stored["values"]

    def planned_for(self, group: Group) -> int:
        if group.trials is not None:
            return group.trials * len(self.config.seeds)
        return group.space.grid_size() * len(self.config.seeds)

    @property
    def planned_total(self) -> int:
        """The planned trials: every configuration's first seeds, plus the extra seeds adaptive
        repeats have planned so far."""
        first = len(self.config.seeds)
        extra = {self._key(t) for t in self.study.get_trials(deepcopy=False) if self._key(t)[1] >= first and "config_id" in t.user_attrs and not results.is_duplicate(t)}
        return sum(self.planned_for(g) for g in self.config.groups) + len(extra)

    def _group_trials(self, group: Group) -> list[FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("group") == group.name]

    @staticmethod
    def _key(trial: FrozenTrial) -> tuple[str, int]:
        return trial.user_attrs.get("config_id"), trial.user_attrs.get("seed", 0)

    def _live_keys(self, trials: list[FrozenTrial]) -> set[tuple[str, int]]:
        superseded = results.retried(trials)  # a retry has its failed trial's group
        return {
            self._key(t) for t in trials
            if t.state in LIVE_STATES and "config_id" in t.user_attrs and not results.is_interrupted(t) and t.number not in superseded
        }

    def _enqueue(self, planned: list[Planned]) -> None:
        """Enqueue trials in this order; a long plan (``repeats: 10000``) prints its progress
        every ``PLANNING_PROGRESS_EVERY`` trials, since each takes a database transaction."""
        loud = self.out is not None and len(planned) >= PLANNING_PROGRESS_EVERY
        names = list(dict.fromkeys(entry.group.name or "main" for entry in planned))
        label = f"group{'s' if len(names) > 1 else ''} {', '.join(names)}"
        for done, entry in enumerate(planned, start=1):
            tags = entry.tags or {"group": entry.group.name, "seed": entry.seed, "config_id": entry.config_id}
            self.study.enqueue_trial(entry.params, user_attrs=tags)
            if loud and (done % PLANNING_PROGRESS_EVERY == 0 or done == len(planned)):
                print(f"[{self.config.name}] planning {label}: {done}/{len(planned)} trials enqueued", file=self.out, flush=True)

    def reconcile(self, group: Group) -> None:
        """Make the stored plan of this group whole (see the module docstring)."""
        with storage.planning_lock(self.storage, self.config.name):
            storage.fail_stale_trials(self.study, self.storage)
            self._enqueue(self._unplanned(group))

    def plan_ahead(self) -> None:
        """Make whole, now, the plan of every grid group that takes no other group's winner.
        Workers take waiting trials of any group, so one with nothing left of its group starts
        the next group's trials instead of waiting for the last of this one. The order: groups
        whose winner another group takes first, then the most FLOPs first. Long trials start
        early and short ones fill the end (the longest-processing-time rule). One worker runs
        the same trials in this order. Not with early stopping, whose rules compare a trial
        with those that reached its epoch before it: there, groups run in turn."""
        if self.config.early_stopping.type != "none":
            return
        independent = [g for g in self.config.groups if g.trials is None and not g.space.best_references]
        with storage.planning_lock(self.storage, self.config.name):
            planned = [entry for group in independent for entry in self._unplanned(group)]
        # Counted outside the lock (a cold cache counts each configuration once, which other
        # workers should not wait for); the plan is taken again under it.
        flops = {entry.config_id: self._expected_flops(entry) for entry in planned if entry.values is not None}
        gating = {source for group in self.config.groups for source in group.space.best_references.values()}

        def order(entry: Planned) -> tuple[bool, float]:
            return entry.group.name not in gating, -flops.get(entry.config_id, math.inf if entry.values is None else 0.0)

        with storage.planning_lock(self.storage, self.config.name):
            storage.fail_stale_trials(self.study, self.storage)
            self._enqueue(sorted((entry for group in independent for entry in self._unplanned(group)), key=order))

    def _expected_flops(self, entry: Planned) -> float:
        """A grid point's measured FLOPs (cached: its trial measures them too); 0 for a spec
        that cannot be built or measured here (its trial says why)."""
        try:
            return float(cost_counts(self.space(entry.group).build_spec(self.config.base, entry.values), self.base_costs)["flops"])
        except Exception:  # noqa: BLE001 - the trial fails alone, with its reason
            return 0.0

    def _unplanned(self, group: Group) -> list[Planned]:
        """What this group's stored plan lacks: its interrupted trials again, and every
        (configuration, seed) it should have and has not (a grid's points; a sampled group's
        started configurations)."""
        trials = self._group_trials(group)
        live = self._live_keys(trials)
        planned = []
        for trial in trials:
            key = self._key(trial)
            if results.is_interrupted(trial) and key[0] is not None and key not in live:
                planned.append(Planned(group, dict(trial.params), key[0], key[1], tags={k: trial.user_attrs[k] for k in TAGS if k in trial.user_attrs}))
                live.add(key)
        if group.trials is not None:  # a sampled group: each started configuration gets all its seeds
            params = {self._key(t)[0]: dict(t.params) for t in trials if self._key(t) in live}
            return planned + [Planned(group, params[cid], cid, seed) for cid in params for seed in self.config.seeds if (cid, seed) not in live]
        space = self.space(group)
        points = space.grid()
        missing = [(values, seed) for values in points for seed in self.config.seeds if (config_id(group.name, values), seed) not in live]
        if missing and not trials:
            self._check_feasible(space, group, points)
        return planned + [
            Planned(group, space.optuna_params(values, self.prefix(group)), config_id(group.name, values), seed, values=values) for values, seed in missing
        ]

    def _check_feasible(self, space: SearchSpace, group: Group, points: list[dict[str, Any]]) -> None:
        """Every grid point must make a valid spec (a bad value is an error before anything
        trains), and with constraints at least one must meet them (a spec that cannot be
        measured here is left to fail alone as a trial)."""
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
            try:
                costs = cost_counts(spec, self.base_costs)
            except Exception:  # noqa: BLE001 - unmeasurable here: its trial will say why
                return
            if space.violation(costs, self.base_costs) is None:
                return
            ratios.append(costs["flops_ratio"])
        raise ScalingLabError(
            f"{space.source}: constraints: every one of the {len(points)} candidates of group {group.name or 'main'!r} breaks "
            f"them (measured FLOPs {min(ratios, default=0):.3g}x to {max(ratios, default=0):.3g}x the base); widen the constraint's range or change the parameters"
        )

    def next_trial(self, group: Group) -> tuple[optuna.Trial, Group, SearchSpace, dict[str, Any], int, str] | None:
        """A trial to run now and its group, space, values, seed and configuration id: a waiting
        trial of any group, or a new configuration of this sampled group; None when there is none."""
        with storage.planning_lock(self.storage, self.config.name):
            trials = self.study.get_trials(deepcopy=False)
            known = {t.user_attrs.get("config_id") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING) or results.trial_state(t) is not None}
            if not any(t.state == TrialState.WAITING for t in trials):
                in_group = {t.user_attrs.get("config_id") for t in trials if t.user_attrs.get("group") == group.name} & known
                if group.trials is None or len(in_group - {None}) >= group.trials:
                    return None
            for _ in range(MAX_DUPLICATE_SAMPLES):
                with warnings.catch_warnings():  # heartbeats are ours (storage.Heartbeat), not Study.optimize's
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = self.study.ask()
                if storage.heartbeats_enabled(self.storage):
                    self.storage.record_heartbeat(trial._trial_id)  # stale, not stuck, if this worker dies now
                try:
                    started = self._start(trial, group, known)
                except BaseException:
                    self.study.tell(trial, state=TrialState.FAIL)  # interrupted: enqueued again by the next plan
                    raise
                if started is not None:
                    return (trial, *started)
        raise ScalingLabError(
            f"{group.space.source}: the sampler proposed {MAX_DUPLICATE_SAMPLES} configurations in a row that group "
            f"{group.name or 'main'!r} already has; its space holds fewer distinct configurations than trials: {group.trials}; lower trials"
        )

    def _start(self, trial: optuna.Trial, current: Group, started: set[str]) -> tuple[Group, SearchSpace, dict[str, Any], int, str] | None:
        """Suggest the trial's values and tag it; a freshly sampled configuration gets the first
        seed here (tagged before its other seeds are enqueued, so a kill in between loses none:
        ``reconcile`` enqueues the seeds a started configuration lacks). A fresh sample of a
        configuration in ``started`` is dropped (None): a (configuration, seed) runs once."""
        group = self.group(trial.user_attrs.get("group", current.name))
        space = self.space(group)
        values = space.suggest(trial, self.prefix(group), grid=self.config.sampler.type == "grid")
        cid = config_id(group.name, values)
        fresh = trial.user_attrs.get("seed") is None
        if fresh and cid in started:
            trial.set_user_attr("record", {"state": "duplicate", "error": f"configuration {cid} was sampled before"})
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        seed = self.config.seeds[0] if fresh else trial.user_attrs["seed"]
        for key, value in (("group", group.name), ("seed", seed), ("config_id", cid)):
            trial.set_user_attr(key, value)
        if fresh:
            self._enqueue([Planned(group, dict(trial.params), cid, other) for other in self.config.seeds[1:]])
        return group, space, values, seed, cid

    def settled(self, group: Group) -> bool:
        """Nothing of this group waits or runs, and a sampled group has all its configurations."""
        trials = self._group_trials(group)
        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
            return False
        if group.trials is None:
            return True
        started = {t.user_attrs.get("config_id") for t in trials if results.trial_state(t) is not None}
        return len(started) >= group.trials

    def plan_round(self) -> bool:
        """Adaptive repeats, once every planned trial has finished: under the planning lock, one
        more seed for the configurations of comparisons still open (``adaptive.plan_round``).
        True while the study has trials to run or wait for; False once it stops (the reason is
        stored and printed). Fixed repeats: False."""
        repeats = self.config.repeat_plan
        if not repeats.adaptive:
            return False
        with storage.planning_lock(self.storage, self.config.name):
            storage.fail_stale_trials(self.study, self.storage)
            trials = self.study.get_trials(deepcopy=False)
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                return True  # this round still runs (planned by this or another worker)
            frame = self.table()
            metric, maximize = decisions.verdict_metric([o.to_dict() for o in self.config.objectives], frame.columns) or (self.config.objectives[0].metric, True)
            found = adaptive.plan_round(self.info(), frame, repeats, metric, maximize)
            params = {t.user_attrs["config_id"]: (dict(t.params), t.user_attrs["group"]) for t in trials if "config_id" in t.user_attrs and "group" in t.user_attrs}
            for cid, seed in found.seeds.items():
                values, group = params[cid]
                self._enqueue([Planned(self.group(group), values, cid, seed)])
            rounds = int((self.study.user_attrs.get(ADAPTIVE_ATTR) or {}).get("rounds", 0)) + (found.stop is None)
            self.study.set_user_attr(ADAPTIVE_ATTR, {"stop": found.stop, "reason": adaptive.STOP_REASONS.get(found.stop), "open": found.open, "comparisons": found.comparisons, "rounds": rounds})
        if self.out is not None:
            print(f"[{self.config.name}] {found.describe()}", file=self.out, flush=True)
        return found.stop is None

    def wait(self, group: Group) -> None:
        """Wait a moment for other workers' trials, then reconcile (failing dead workers' trials)."""
        time.sleep(POLL_S)
        self.reconcile(group)

    def consecutive_rejections(self, group: Group) -> int:
        count = 0
        for trial in reversed(self._group_trials(group)):
            state = results.trial_state(trial)
            if state is None or state == "running":
                continue
            if state != "rejected":
                break
            count += 1
        return count
