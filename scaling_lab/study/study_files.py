"""Study files (``studies/*.yaml``): a ``StudyConfig`` (``config``) in YAML, checked key by key
so that a bad value names its file, key and what would be valid. ``profiles`` are named sets of
changes (``--profile cpu``) merged over the file before ``--set`` overrides.
"""

from __future__ import annotations

import copy
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from scaling_lab.decisions import UNTIL
from scaling_lab.errors import ScalingLabError
from scaling_lab.ranges import Range
from scaling_lab.schema import COST_COLUMNS, quality_metrics
from scaling_lab.spec import Spec, deep_merge, spec_from_dict
from scaling_lab.spec_files import load_spec, parse_overrides, read_yaml
from scaling_lab.study.config import TRACKING_KINDS, EarlyStopping, Group, Objective, Repeats, Resources, Sampler, StudyConfig, Tracking
from scaling_lab.study.search_space_files import load_search_space
from scaling_lab.trial import Budget, Task, batch_split_problem

EXPERIMENTS = ("quickstart", "compound_grid", "fpn_ablation", "fusion_ablation", "pareto", "proxy_findings")
SAMPLERS = ("grid", "random", "tpe", "nsga2")
EARLY_STOPPING = ("none", "asha", "hyperband", "median")
BACKENDS = ("local", "ray")
DIRECTIONS = ("maximize", "minimize")
STUDY_KEYS = (
    "name", "experiment", "description", "base", "search_space", "groups", "task", "objectives", "sampler",
    "early_stopping", "repeats", "resources", "backend", "storage", "run_dir", "measure_latency", "derive", "profiles",
    "tracking",
)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _fail(where: str, message: str) -> ScalingLabError:
    return ScalingLabError(f"{where}: {message}")


def _mapping(where: str, key: str, value: Any, valid: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, f"{key}: expected a mapping with keys {', '.join(valid)}, got {value!r}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise _fail(where, f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(valid)}")
    return dict(value)


def _choice(where: str, key: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise _fail(where, f"{key}: {value!r} is not valid; valid values are {', '.join(valid)}")
    return value


def _integer(where: str, key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(where, f"{key}: expected an integer of at least {minimum}, got {value!r}")
    return value


def _parse_base(where: str, raw: Any, study_dir: Path) -> Spec:
    if isinstance(raw, str):
        candidate = study_dir / raw
        try:
            return load_spec(str(candidate) if candidate.is_file() else raw)
        except ScalingLabError as exc:
            raise _fail(where, f"base: {exc}") from None
    if isinstance(raw, Mapping):
        try:
            return spec_from_dict(raw, f"{where}: base")
        except ScalingLabError as exc:
            message = str(exc)
            raise ScalingLabError(message if message.startswith(where) else f"{where}: base: {message}") from None
    raise _fail(where, f"base: expected a preset name, a spec file or a spec mapping, got {raw!r}")


def _parse_task(where: str, raw: Any) -> tuple[Task, Budget]:
    task_keys = tuple(f.name for f in fields(Task))
    budget_keys = tuple(f.name for f in fields(Budget))
    data = _mapping(where, "task", raw, task_keys + budget_keys)
    budget = Budget.from_dict({k: v for k, v in data.items() if k in budget_keys}, f"{where}: task")
    task = Task.from_dict({k: v for k, v in data.items() if k in task_keys}, f"{where}: task")
    return task, budget


def _parse_objectives(where: str, raw: Any, task: Task) -> tuple[Objective, ...]:
    quality = quality_metrics(task.kind)
    valid = quality + COST_COLUMNS
    if raw is None:
        raw = [quality[0]]
    if not isinstance(raw, list) or not raw:
        raise _fail(where, f"objectives: expected a non-empty list such as [{{metric: {quality[0]}, direction: maximize}}]")
    objectives = []
    for index, item in enumerate(raw):
        key = f"objectives[{index}]"
        entry = {"metric": item} if isinstance(item, str) else _mapping(where, key, item, ("metric", "direction"))
        metric = _choice(where, f"{key}.metric", entry.get("metric"), valid)
        default = "maximize" if metric in quality else "minimize"
        objectives.append(Objective(metric, _choice(where, f"{key}.direction", entry.get("direction", default), DIRECTIONS)))
    if len({o.metric for o in objectives}) != len(objectives):
        raise _fail(where, "objectives: each metric may appear once")
    return tuple(objectives)


def _parse_groups(where: str, data: Mapping[str, Any], base: Spec, study_dir: Path, sampler: Sampler) -> tuple[Group, ...]:
    if ("groups" in data) == ("search_space" in data):
        raise _fail(where, "give either search_space (one space) or groups (a list of {name, search_space, trials})")
    raw_groups = data["groups"] if "groups" in data else [{"name": "", "search_space": data["search_space"]}]
    if not isinstance(raw_groups, list) or not raw_groups:
        raise _fail(where, "groups: expected a non-empty list of {name, search_space, trials}")
    groups: list[Group] = []
    for index, raw in enumerate(raw_groups):
        key = f"groups[{index}]" if "groups" in data else "search_space"
        entry = _mapping(where, key, raw, ("name", "search_space", "trials"))
        name = entry.get("name")
        if not isinstance(name, str) or (name and not _NAME_PATTERN.match(name)) or ("groups" in data and not name):
            raise _fail(where, f"{key}.name: expected a name of letters, digits, '_', '.' or '-', got {name!r}")
        if name in {g.name for g in groups}:
            raise _fail(where, f"{key}.name: {name!r} is used by an earlier group; group names must be unique")
        if "search_space" not in entry:
            raise _fail(where, f"{key}.search_space: missing; give a search space file or an inline mapping")
        space = load_search_space(entry["search_space"], base, study_dir, f"{where}: {key}.search_space")
        for parameter, group in space.best_references.items():
            if group not in {g.name for g in groups}:
                valid = ", ".join(g.name for g in groups) or "none (it must come after the group it refers to)"
                raise _fail(where, f"{key}: parameter {parameter!r} takes the best of group {group!r}; valid earlier groups are {valid}")
        trials = entry.get("trials", sampler.trials)
        if sampler.type == "grid":
            if "trials" in entry:
                raise _fail(where, f"{key}.trials: a grid study runs every grid point; trials applies to random, tpe and nsga2")
            space.grid_size()  # checks every parameter can be enumerated
        else:
            trials = _integer(where, f"{key}.trials (or sampler.trials)", trials, 1)
        groups.append(Group(name, space, trials))
    return tuple(groups)


def _number(where: str, key: str, value: Any, valid: "Range") -> float:
    if not valid.contains(value):
        raise _fail(where, f"{key}: expected {valid.describe()}, got {value!r}")
    return value


def _parse_repeats(where: str, raw: Any) -> Repeats:
    """``repeats: 3`` (fixed) or ``repeats: {min: 3, max: 12, until: resolved, margin: 0.01,
    budget: {trials: 60} or {hours: 1.5}}`` (adaptive)."""
    if not isinstance(raw, Mapping):
        count = _integer(where, "repeats", raw, 1)
        return Repeats(count, count)
    data = _mapping(where, "repeats", raw, ("min", "max", "until", "margin", "budget"))
    for key in ("min", "max"):
        if key not in data:
            raise _fail(where, f"repeats.{key}: missing; adaptive repeats need min and max seeds, e.g. {{min: 3, max: 12, until: resolved}}")
    low = _integer(where, "repeats.min", data["min"], 2)  # one seed says nothing about seed noise
    high = _integer(where, "repeats.max", data["max"], low)
    until = _choice(where, "repeats.until", data.get("until", UNTIL[0]), UNTIL)
    margin = float(_number(where, "repeats.margin", data.get("margin", 0.0), Range(0)))
    budget = _mapping(where, "repeats.budget", data.get("budget"), ("trials", "hours"))
    trials = _integer(where, "repeats.budget.trials", budget["trials"], 1) if "trials" in budget else None
    hours = float(_number(where, "repeats.budget.hours", budget["hours"], Range(0, low_open=True))) if "hours" in budget else None
    return Repeats(low, high, until, margin, trials, hours)


def default_run_dir(name: str, profile: str | None) -> Path:
    """``runs/<name>/``, or ``runs/<name>-<profile>/`` for a profile: a profile is another study
    definition, so its results never share a run folder with the full study's."""
    return Path("runs") / (f"{name}-{profile}" if profile else name)


def _parse_sampler(where: str, raw: Any, objectives: tuple[Objective, ...]) -> Sampler:
    data = _mapping(where, "sampler", raw, ("type", "seed", "trials"))
    sampler = Sampler(
        type=_choice(where, "sampler.type", data.get("type", "tpe"), SAMPLERS),
        seed=_integer(where, "sampler.seed", data.get("seed", 0), 0),
        trials=data.get("trials"),
    )
    if sampler.type == "grid" and sampler.trials is not None:
        raise _fail(where, "sampler.trials: a grid study runs every grid point; trials applies to random, tpe and nsga2")
    if sampler.type == "nsga2" and len(objectives) < 2:
        raise _fail(where, "sampler.type: nsga2 is a multi-objective sampler; give two or more objectives or use tpe")
    return sampler


def _parse_early_stopping(where: str, raw: Any, objectives: tuple[Objective, ...]) -> EarlyStopping:
    data = _mapping(where, "early_stopping", raw, ("type", "min_epochs", "reduction_factor"))
    early_stopping = EarlyStopping(
        type=_choice(where, "early_stopping.type", data.get("type", "none"), EARLY_STOPPING),
        min_epochs=_integer(where, "early_stopping.min_epochs", data.get("min_epochs", 1), 1),
        reduction_factor=_integer(where, "early_stopping.reduction_factor", data.get("reduction_factor", 3), 2),
    )
    if early_stopping.type != "none" and len(objectives) > 1:
        raise _fail(where, "early_stopping.type: early stopping needs a single objective (Optuna cannot prune multi-objective studies); use none")
    return early_stopping


def _parse_resources(where: str, raw: Any, task: Task) -> Resources:
    resources = Resources(**_mapping(where, "resources", raw, tuple(f.name for f in fields(Resources))))
    if not isinstance(resources.cpus, (int, float)) or isinstance(resources.cpus, bool) or resources.cpus <= 0:
        raise _fail(where, f"resources.cpus: expected a positive number, got {resources.cpus!r}")
    if resources.gpus != "auto" and (not isinstance(resources.gpus, (int, float)) or isinstance(resources.gpus, bool) or resources.gpus < 0):
        raise _fail(where, f"resources.gpus: expected a number of at least 0 (0.25 shares a GPU by four) or auto, got {resources.gpus!r}")
    if not isinstance(resources.gpu_memory_gb, (int, float)) or isinstance(resources.gpu_memory_gb, bool) or resources.gpu_memory_gb <= 0:
        raise _fail(where, f"resources.gpu_memory_gb: expected a positive number, got {resources.gpu_memory_gb!r}")
    try:
        workers = resources.trial_workers
    except ScalingLabError as exc:
        raise _fail(where, f"resources.{exc}") from None
    if workers.count > 1 and resources.gpus == "auto":
        raise _fail(where, "resources.gpus: auto shares a GPU among one-process trials; a trial of several workers takes gpus_per_worker")
    split_problem = batch_split_problem(task.batch_size, workers.count)
    if split_problem:
        raise _fail(where, f"resources.workers: task batch_size is the global batch: {split_problem}")
    return resources


def _parse_storage(where: str, raw: Any) -> str | None:
    if raw is not None and (not isinstance(raw, str) or (raw not in ("sqlite", "journal") and "://" not in raw)):
        raise _fail(where, f"storage: {raw!r} is not valid; valid values are sqlite, journal or a SQLAlchemy URL such as postgresql://user@host/db")
    return raw


def _parse_tracking(where: str, raw: Any) -> Tracking:
    """``tracking: mlflow`` or ``tracking: {kind: mlflow, uri: URI}`` (TensorBoard files are always written)."""
    entry = _mapping(where, "tracking", {"kind": raw} if isinstance(raw, str) else raw, ("kind", "uri"))
    kind = _choice(where, "tracking.kind", entry.get("kind", Tracking.kind), TRACKING_KINDS)
    uri = entry.get("uri")
    if uri is not None and (not isinstance(uri, str) or not uri):
        raise _fail(where, f"tracking.uri: expected an MLflow tracking URI such as http://host:5000 or sqlite:///mlflow.db, got {uri!r}")
    if uri is not None and kind != "mlflow":
        raise _fail(where, "tracking.uri: is MLflow's tracking URI; set tracking.kind: mlflow to use it")
    return Tracking(kind, uri)


def _parse_derive_group(where: str, raw: Any, groups: tuple[Group, ...]) -> str | None:
    derive_group = _mapping(where, "derive", raw, ("group",)).get("group")
    if derive_group is not None and (not isinstance(derive_group, str) or derive_group not in {g.name for g in groups}):
        raise _fail(where, f"derive.group: {derive_group!r} is not a group; valid groups are {', '.join(g.name for g in groups)}")
    return derive_group


def parse_study(
    data: Any, study_file: str | Path, study_yaml: str = "", run_dir: str | Path | None = None, profile: str | None = None
) -> StudyConfig:
    """Validate a study mapping (profiles and overrides already applied)."""
    where = str(study_file)
    study_dir = Path(study_file).parent
    data = _mapping(where, "study", data, STUDY_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise _fail(where, f"name: expected a name of letters, digits, '_', '.' or '-', got {name!r}")
    experiment = data.get("experiment")
    if experiment is not None:
        _choice(where, "experiment", experiment, EXPERIMENTS)
    if "base" not in data:
        raise _fail(where, "base: missing; give a preset name (e.g. efficientdet-d0), a spec file or a spec mapping")
    base = _parse_base(where, data["base"], study_dir)
    task, budget = _parse_task(where, data.get("task"))
    objectives = _parse_objectives(where, data.get("objectives"), task)
    sampler = _parse_sampler(where, data.get("sampler"), objectives)
    repeats = _parse_repeats(where, data.get("repeats", 1))
    measure_latency = data.get("measure_latency", False)
    if not isinstance(measure_latency, bool):
        raise _fail(where, f"measure_latency: expected true or false, got {measure_latency!r}")
    groups = _parse_groups(where, data, base, study_dir, sampler)
    if not isinstance(data.get("run_dir", ""), str):
        raise _fail(where, f"run_dir: expected a folder path, got {data['run_dir']!r}")
    chosen_run_dir = run_dir if run_dir is not None else data.get("run_dir") or default_run_dir(name, profile)
    return StudyConfig(
        name=name,
        experiment=experiment,
        base=base,
        groups=groups,
        task=task,
        budget=budget,
        objectives=objectives,
        sampler=sampler,
        early_stopping=_parse_early_stopping(where, data.get("early_stopping"), objectives),
        seeds=tuple(range(repeats.min)),
        resources=_parse_resources(where, data.get("resources"), task),
        backend=_choice(where, "backend", data.get("backend", "local"), BACKENDS),
        storage=_parse_storage(where, data.get("storage")),
        run_dir=Path(chosen_run_dir).expanduser().resolve(),
        measure_latency=measure_latency,
        derive_group=_parse_derive_group(where, data.get("derive"), groups),
        study_file=str(Path(study_file).resolve()) if Path(study_file).is_file() else str(study_file),
        study_yaml=study_yaml,
        repeats=repeats,
        tracking=_parse_tracking(where, data.get("tracking")),
    )


def load_study(
    path: str | Path,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
) -> StudyConfig:
    """Read a study file, merge the chosen profile and ``--set`` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ScalingLabError(f"study file {str(path)!r} does not exist")
    data = read_yaml(path)
    text = path.read_text(encoding="utf-8")
    if not isinstance(data, Mapping):
        raise ScalingLabError(f"{path}: expected a mapping of study keys ({', '.join(STUDY_KEYS)})")
    data = _with_profile(path, copy.deepcopy(dict(data)), profile)
    if overrides:
        data = deep_merge(data, parse_overrides(list(overrides)))
    return parse_study(data, path, text, run_dir, profile)


def _with_profile(path: Path, data: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """The study mapping with its chosen profile merged in (and the profiles removed)."""
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, Mapping):
        raise _fail(str(path), f"profiles: expected a mapping of profile name -> changes, got {profiles!r}")
    if profile is None:
        return data
    if profile not in profiles:
        valid = ", ".join(profiles) or "none (this study defines no profiles)"
        raise _fail(str(path), f"--profile {profile!r} is not defined; valid profiles are {valid}")
    if not isinstance(profiles[profile], Mapping):
        raise _fail(str(path), f"profiles.{profile}: expected a mapping of study changes")
    return deep_merge(data, profiles[profile])


def run_dir_for(study_path_or_run_dir: str | Path, profile: str | None = None) -> Path:
    """The run folder of a study file (its ``run_dir``, or ``runs/<name>/`` and
    ``runs/<name>-<profile>/`` for a profile), or the folder itself when given a run folder (one
    holding ``study.json``)."""
    path = Path(study_path_or_run_dir)
    if path.is_dir():
        if not (path / "study.json").is_file():
            raise ScalingLabError(f"{path}: not a run folder (no study.json); give a study file or a run folder")
        return path.resolve()
    if path.is_file():
        data = read_yaml(path)
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise _fail(str(path), "name: a study file needs a name")
        data = _with_profile(path, dict(data), profile)
        return Path(data.get("run_dir") or default_run_dir(data["name"], profile)).expanduser().resolve()
    raise ScalingLabError(f"{path}: neither a study file nor a run folder")
