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
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from scaling_lab.files import atomic_write
from scaling_lab.study.config import CLASSIFICATION_METRICS, DETECTION_METRICS, StudyConfig

STATES = ("complete", "pruned", "failed", "rejected", "running")
COST_COLUMNS = ("params", "flops", "flops_elementwise", "activations", "latency_ms", "flops_ratio")
# ``study.json``'s content is kept in the database too (a study user attribute), so that a lost or
# damaged ``study.json`` is rebuilt without the study file (``scaling_lab.study.run_folder``).
INFO_ATTR = "run_folder_info"
LIBRARIES = ("scaling-lab", "torch", "optuna", "ray", "fvcore", "pandas", "pyarrow", "numpy")


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


def _flatten_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Spec fields as columns: nested backbone fields prefixed ``backbone.``, lists as JSON."""
    columns: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            columns.update({f"{key}.{k}": v for k, v in _flatten_spec(value).items()})
        else:
            columns[key] = json.dumps(value) if isinstance(value, list) else value
    return columns


def trial_row(trial: FrozenTrial, quality_metrics: tuple[str, ...]) -> dict[str, Any] | None:
    state = trial_state(trial)
    if state is None:
        return None
    record = trial.user_attrs.get("record", {})
    spec = record.get("spec") or {}
    costs = record.get("costs") or {}
    metrics = record.get("metrics") or {}
    row: dict[str, Any] = {
        "trial_id": trial.number,
        "state": state,
        "error": record.get("error") or "",
        "seed": int(trial.user_attrs.get("seed", record.get("seed", 0))),
        "config_id": trial.user_attrs.get("config_id", ""),
        "group": trial.user_attrs.get("group", ""),
        "spec_hash": record.get("spec_hash", ""),
        "spec": json.dumps(spec, sort_keys=True) if spec else "",
    }
    row.update(_flatten_spec(spec))
    row.update({f"param.{name}": value for name, value in (record.get("params") or {}).items()})
    row.update({metric: metrics.get(metric) for metric in quality_metrics})
    row.update({bound: metrics[bound] for metric in quality_metrics for bound in (f"{metric}_ci_low", f"{metric}_ci_high") if bound in metrics})
    row.update({cost: costs.get(cost) for cost in COST_COLUMNS})
    row.update(
        {
            "wall_time_s": record.get("wall_time_s"),
            "epochs_done": int(record.get("epochs_done", 0)),
            "curve": json.dumps(record.get("curve") or []),
            "started": record.get("started") or (trial.datetime_start.isoformat() if trial.datetime_start else ""),
            "finished": record.get("finished") or "",
        }
    )
    return row


def results_frame(trials: list[FrozenTrial], task_kind: str) -> pd.DataFrame:
    quality = DETECTION_METRICS if task_kind == "detection" else CLASSIFICATION_METRICS
    superseded = retried(trials)
    rows = [row for row in (trial_row(t, quality) for t in trials if t.number not in superseded) if row is not None]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["trial_id", "state", "error", "seed", "config_id", "group", "spec_hash", "spec"])
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds - {int, float}) and len(kinds) > 1:  # mixed types (e.g. a choice of numbers and names)
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame.sort_values("trial_id").reset_index(drop=True) if not frame.empty else frame


def write_json(path: Path, data: dict[str, Any]) -> None:
    def dump(temporary: str) -> None:
        Path(temporary).write_text(json.dumps(data, indent=2, default=str) + "\n")

    atomic_write(path, dump)


def write_table(run_dir: Path, frame: pd.DataFrame) -> None:
    atomic_write(run_dir / "results.parquet", lambda temporary: frame.to_parquet(temporary, index=False))
    atomic_write(run_dir / "results.csv", lambda temporary: frame.to_csv(temporary, index=False))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            continue
    return versions


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
