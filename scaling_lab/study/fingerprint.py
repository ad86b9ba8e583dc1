"""A study's definition: everything in a study file that decides a trial's numbers.

The base spec, the task and budget, each group's search space, the objectives, the seeds (and
an adaptive study's ``repeats``: min, max, until and margin), the sampler and early stopping are
part of it; resources, backend, storage, run folder, the number of trials to sample, the
repeats' budget and the description are not (they change where and how much runs, not what a
trial measures or how comparisons are decided). A study stores its definition when created; opening it with another one is
an error that names the keys that differ, so a run folder never mixes numbers of two studies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

from scaling_lab.errors import ScalingLabError
from scaling_lab.study.config import StudyConfig


def _space(space: Any) -> dict[str, Any]:
    return {
        "parameters": [dataclasses.asdict(p) for p in space.parameters],
        "constraints": [dataclasses.asdict(c) for c in space.constraints],
    }


def definition(config: StudyConfig) -> dict[str, Any]:
    """The result-deciding part of a study, as plain JSON values."""
    data = {
        "base": config.base.to_dict(),
        "task": dataclasses.asdict(config.task),
        "budget": dataclasses.asdict(config.budget),
        "groups": [{"name": g.name, "search_space": _space(g.space)} for g in config.groups],
        "objectives": [o.to_dict() for o in config.objectives],
        "seeds": list(config.seeds),
        "sampler": {"type": config.sampler.type, "seed": config.sampler.seed},
        "early_stopping": dataclasses.asdict(config.early_stopping),
    }
    if config.repeat_plan.adaptive:  # absent for fixed repeats, as stored before adaptive repeats existed
        data["repeats"] = config.repeat_plan.definition()
    return json.loads(json.dumps(data, default=str))  # tuples become lists, as they come back from storage


def definition_hash(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        items: dict[str, Any] = {}
        for key, item in value.items():
            items.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return items or {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        items = {}
        for index, item in enumerate(value):
            label = item.get("name") if isinstance(item.get("name"), str) and prefix == "groups" else index
            items.update(_flatten(item, f"{prefix}[{label}]"))
        return items
    return {prefix: value}


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, as ``key: stored -> current`` lines."""
    before, after = _flatten(stored), _flatten(current)
    keys = sorted(set(before) | set(after))
    return [f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}" for key in keys if before.get(key, "(absent)") != after.get(key, "(absent)")]


def check_same_definition(stored: Mapping[str, Any], current: Mapping[str, Any], where: str, run_dir: str) -> None:
    """Raise, naming what differs, when ``current`` is not the study ``stored`` describes."""
    changed = differences(stored, current)
    if not changed:
        return
    shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
    raise ScalingLabError(
        f"{where}: this study's definition differs from the one stored in {run_dir} ({shown}); its results would mix "
        "with trials of another definition. Give another run folder (--run-dir DIR) or another study name, or delete "
        "the stored study to start over"
    )
