"""The results table's schema, in one place: the trial states, the metrics a trial reports, the
cost columns, how a trial's record becomes a row, and which library versions a record keeps.

Evaluation reports its metrics under these names, studies write the table with ``table_row`` and
``results_table``, and reports read it with the same names, so a metric or a column is added here
once. Accuracy metrics are fractions in [0, 1] (the report prints them as percentages).
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Any, Mapping

import pandas as pd

# The states of a trial's row: ``running`` until it has an outcome.
TRIAL_STATES = ("complete", "pruned", "failed", "rejected", "running")
FINISHED_STATES = tuple(state for state in TRIAL_STATES if state != "running")

DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in its order
CLASSIFICATION_METRICS = ("top1", "top5")
ACCURACY_METRICS = (*DETECTION_METRICS, *CLASSIFICATION_METRICS)


def quality_metrics(task_kind: str) -> tuple[str, ...]:
    """The accuracy metrics a trial of this task kind reports."""
    return DETECTION_METRICS if task_kind == "detection" else CLASSIFICATION_METRICS


def interval_columns(metric: str) -> tuple[str, str]:
    """The columns of a metric's 95 % interval (a trial's bootstrap, or over seeds in a report)."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


# A trial's bootstrap replicates over validation images, as JSON: ``{"resampling": fingerprint,
# "AP": [...], "AP50": [...]}`` (``scaling_lab.train.bootstrap``; empty without a bootstrap).
BOOTSTRAP_COLUMN = "bootstrap"

INTERVAL_COLUMNS = tuple(column for metric in ACCURACY_METRICS for column in interval_columns(metric))

MEASURED_COSTS = ("params", "flops", "flops_elementwise", "activations")  # fvcore's counts: constrainable
COST_COLUMNS = (*MEASURED_COSTS, "latency_ms", "flops_ratio")
PLOTTED_COSTS = ("flops", "params", "activations", "latency_ms")  # the report's Pareto axes
# Operators fvcore could not count, as "aten::op×calls, ..." (empty when every one was counted).
UNCOUNTED_COLUMN = "uncounted_ops"
IDENTITY_COLUMNS = ("trial_id", "state", "error", "seed", "config_id", "group", "spec_hash", "spec")
NUMERIC_COLUMNS = (*ACCURACY_METRICS, *INTERVAL_COLUMNS, *COST_COLUMNS, "wall_time_s", "epochs_done", "seed")

# The libraries whose versions a study records (``study.json``) and a trial keeps with its result.
RECORDED_LIBRARIES = ("scaling-lab", "torch", "optuna", "ray", "fvcore", "pycocotools", "pandas", "pyarrow", "numpy")


def library_versions(libraries: tuple[str, ...] = RECORDED_LIBRARIES) -> dict[str, str]:
    """Python's version and each installed library's (as its package metadata says)."""
    versions = {"python": platform.python_version()}
    for library in libraries:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            continue
    return versions


def flatten_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Spec fields as columns: nested backbone fields prefixed ``backbone.``, lists as JSON."""
    columns: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            columns.update({f"{key}.{k}": v for k, v in flatten_spec(value).items()})
        else:
            columns[key] = json.dumps(value) if isinstance(value, list) else value
    return columns


def uncounted_text(uncounted: Mapping[str, int]) -> str:
    return ", ".join(f"{op}×{calls}" for op, calls in sorted(uncounted.items()))


def table_row(
    record: Mapping[str, Any], *, trial_id: int, state: str, seed: int, config_id: str, group: str, task_kind: str
) -> dict[str, Any]:
    """One trial's row from its record (spec, params, costs, metrics, curve, error, times: what
    ``scaling_lab.study.candidate`` writes)."""
    spec = record.get("spec") or {}
    costs = record.get("costs") or {}
    metrics = record.get("metrics") or {}
    quality = quality_metrics(task_kind)
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "state": state,
        "error": record.get("error") or "",
        "seed": seed,
        "config_id": config_id,
        "group": group,
        "spec_hash": record.get("spec_hash", ""),
        "spec": json.dumps(spec, sort_keys=True) if spec else "",
    }
    row.update(flatten_spec(spec))
    row.update({f"param.{name}": value for name, value in (record.get("params") or {}).items()})
    row.update({metric: metrics.get(metric) for metric in quality})
    row.update({bound: metrics[bound] for metric in quality for bound in interval_columns(metric) if bound in metrics})
    row.update({cost: costs.get(cost) for cost in COST_COLUMNS})
    row[UNCOUNTED_COLUMN] = uncounted_text(record.get("uncounted_ops") or {})
    row.update(
        {
            "wall_time_s": record.get("wall_time_s"),
            "epochs_done": int(record.get("epochs_done", 0)),
            "curve": json.dumps(record.get("curve") or []),
            BOOTSTRAP_COLUMN: json.dumps(record.get(BOOTSTRAP_COLUMN) or {}),
            "started": record.get("started") or "",
            "finished": record.get("finished") or "",
        }
    )
    return row


def read_curve(text: Any) -> list[dict[str, Any]]:
    """The per-validation records of a row's ``curve`` column (``table_row`` writes it as JSON):
    empty when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return []
    try:
        curve = json.loads(text)
    except json.JSONDecodeError:
        return []
    return [point for point in curve if isinstance(point, dict) and "epoch" in point] if isinstance(curve, list) else []


def results_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table of rows, by trial id; a column mixing numbers and names holds text."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(IDENTITY_COLUMNS))
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds - {int, float}) and len(kinds) > 1:  # mixed types (e.g. a choice of numbers and names)
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame.sort_values("trial_id").reset_index(drop=True)
