"""The run folder's tidy results table and ``study.json``, rebuilt from the Optuna storage (the
source of truth: each trial's data lives in its user attributes) and written atomically.

Trial user attributes: ``group``, ``seed`` and ``config_id`` (set when the trial is enqueued or
sampled) and ``record`` (spec, parameters, costs, metrics, curve, state, error, times).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from scaling_lab.files import atomic_write
from scaling_lab.schema import FINISHED_STATES, library_versions, results_table, table_row
from scaling_lab.stats import complete_trials
from scaling_lab.study.config import StudyConfig
# ``study.json``'s content is kept in the database too (a study user attribute), so that a lost or
# damaged ``study.json`` is rebuilt without the study file (``scaling_lab.study.run_folder``).
INFO_ATTR = "run_folder_info"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_interrupted(trial: FrozenTrial) -> bool:
    """A trial that stopped without an outcome (Ctrl-C, kill -9, a lost worker, a full disk): it
    is run again and left out of the table. Failed trials always carry a record saying so."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get("record", {}).get("state") not in ("failed", "duplicate")


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that ``run --retry-failed`` enqueued again (their retries carry
    ``retry_of``): the retry stands for the failed trial, which leaves the table."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def is_duplicate(trial: FrozenTrial) -> bool:
    """A sampled configuration the group already had: dropped before training, never a row."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get("record", {}).get("state") == "duplicate"


def trial_state(trial: FrozenTrial) -> str | None:
    """The table's state of a trial, or None when it has no row (waiting, interrupted, duplicate)."""
    if trial.state == TrialState.WAITING or is_interrupted(trial) or is_duplicate(trial):
        return None
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "rejected" if trial.user_attrs.get("record", {}).get("state") == "rejected" else "pruned"
    return "failed"


def trial_row(trial: FrozenTrial, task_kind: str) -> dict[str, Any] | None:
    """The trial's row of the results table (``scaling_lab.schema.table_row``), None when it has none."""
    state = trial_state(trial)
    if state is None:
        return None
    record = dict(trial.user_attrs.get("record", {}))
    if not record.get("started") and trial.datetime_start:
        record["started"] = trial.datetime_start.isoformat()
    return table_row(
        record,
        trial_id=trial.number,
        state=state,
        seed=int(trial.user_attrs.get("seed", record.get("seed", 0))),
        config_id=trial.user_attrs.get("config_id", ""),
        group=trial.user_attrs.get("group", ""),
        task_kind=task_kind,
    )


def results_frame(trials: list[FrozenTrial], task_kind: str) -> pd.DataFrame:
    superseded = retried(trials)
    return results_table([row for row in (trial_row(t, task_kind) for t in trials if t.number not in superseded) if row is not None])


def write_json(path: Path, data: dict[str, Any]) -> None:
    def dump(temporary: str) -> None:
        Path(temporary).write_text(json.dumps(data, indent=2, default=str) + "\n")

    atomic_write(path, dump)


def write_table(run_dir: Path, frame: pd.DataFrame) -> None:
    atomic_write(run_dir / "results.parquet", lambda temporary: frame.to_parquet(temporary, index=False))
    atomic_write(run_dir / "results.csv", lambda temporary: frame.to_csv(temporary, index=False))


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def study_info(config: StudyConfig, study: optuna.Study, planned_trials: int, finished: bool) -> dict[str, Any]:
    return {
        "name": config.name,
        "experiment": config.experiment,
        "objectives": [o.to_dict() for o in config.objectives],
        "study_file": config.study_file,
        "study_yaml": config.study_yaml,
        "base_spec": config.base.to_dict(),
        "planned_trials": planned_trials,
        "finished": finished,
        "git_commit": study.user_attrs.get("git_commit"),
        "versions": library_versions(),
        "hardware": hardware(),
        "created": study.user_attrs.get("created"),
        "storage": config.storage_url,
        "task_kind": config.task.kind,
        "derive_group": config.derive_group,
        "groups": [
            {"name": g.name, "constraints": [dataclasses.asdict(c) for c in g.space.constraints]} for g in config.groups
        ],
    }


def write_run_folder(study: optuna.Study, run_dir: Path, frame: pd.DataFrame, info: dict[str, Any]) -> None:
    """Rewrite the derived files of a run folder (the table and ``study.json``) from the storage,
    which keeps ``study.json``'s content too, so that it can be rebuilt without the study file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_table(run_dir, frame)
    study.set_user_attr(INFO_ATTR, json.loads(json.dumps(info, default=str)))
    write_json(run_dir / "study.json", info)


def progress_line(frame: pd.DataFrame, planned: int, config: StudyConfig) -> str:
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    done = sum(counts.get(s, 0) for s in FINISHED_STATES)
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
    done = complete_trials(frame)
    if objective.metric not in done.columns or done.empty:
        return done.head(0)
    return done.sort_values(objective.metric, ascending=objective.direction == "minimize").head(count)
