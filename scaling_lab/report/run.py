"""Reading a study's run folder (``runs/<study>/``: ``results.parquet`` or ``.csv`` and ``study.json``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scaling_lab import decisions
from scaling_lab.errors import ScalingLabError
from scaling_lab.files import read_parquet
from scaling_lab.schema import NUMERIC_COLUMNS, TRIAL_STATES
from scaling_lab.spec import BackboneSpec, DetectorSpec
from scaling_lab.stats import complete_trials

SPEC_FIELDS = frozenset(f.name for spec in (DetectorSpec, BackboneSpec) for f in dataclasses.fields(spec))


@dataclass
class Run:
    """One study's trials and metadata, as the report needs them."""

    directory: Path
    study: dict[str, Any]
    trials: pd.DataFrame
    main_metric: str

    @property
    def name(self) -> str:
        return str(self.study.get("name") or self.directory.name)

    @property
    def finished(self) -> bool:
        return bool(self.study.get("finished", True))

    @property
    def complete(self) -> pd.DataFrame:
        return complete_trials(self.trials)

    @property
    def spec_columns(self) -> list[str]:
        """The flattened spec fields present in the results: ``backbone.*`` and the plain spec fields."""
        return [c for c in self.trials.columns if c.startswith("backbone.") or c in SPEC_FIELDS]

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("param.")]


def load_run(run_dir: str | Path) -> Run:
    """Read and check a run folder; bad or missing files raise ``ScalingLabError``."""
    directory = Path(run_dir)
    study_file = directory / "study.json"
    if not study_file.is_file():
        raise ScalingLabError(f"{directory}: no study.json; a run folder holds study.json and results.parquet or results.csv")
    try:
        study = json.loads(study_file.read_text())
    except json.JSONDecodeError as exc:
        raise ScalingLabError(f"{study_file}: not valid JSON ({exc})") from exc
    if not isinstance(study, dict):
        raise ScalingLabError(f"{study_file}: expected a JSON object, got {type(study).__name__}")
    results_file, trials = _read_results(directory)
    trials = _checked_trials(results_file, trials)
    return Run(directory, study, trials, _main_metric(study_file, study, trials))


def _read_results(directory: Path) -> tuple[Path, pd.DataFrame]:
    parquet, csv = directory / "results.parquet", directory / "results.csv"
    if parquet.is_file():
        return parquet, read_parquet(parquet)
    if csv.is_file():
        return csv, pd.read_csv(csv, keep_default_na=False, na_values=[""])
    raise ScalingLabError(f"{directory}: no results.parquet or results.csv yet; the study has recorded no trials")


def _checked_trials(results_file: Path, trials: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("trial_id", "state") if c not in trials.columns]
    if missing:
        raise ScalingLabError(f"{results_file}: missing column(s) {', '.join(missing)}; every trial row needs trial_id and state")
    trials = trials.copy()
    unknown = sorted(set(trials["state"].astype(str)) - set(TRIAL_STATES))
    if unknown:
        raise ScalingLabError(f"{results_file}: column 'state' has value(s) {', '.join(map(repr, unknown))}; valid states are {', '.join(TRIAL_STATES)}")
    for column in NUMERIC_COLUMNS:
        if column in trials.columns:
            try:
                trials[column] = pd.to_numeric(trials[column]).astype(float)
            except (ValueError, TypeError) as exc:
                raise ScalingLabError(f"{results_file}: column {column!r} must be numeric ({exc})") from exc
    for column in ("error", "group"):
        trials[column] = trials[column].fillna("").astype(str) if column in trials.columns else ""
    if "config_id" not in trials.columns:
        trials["config_id"] = trials["spec_hash"] if "spec_hash" in trials.columns else trials["trial_id"]
    trials["config_id"] = trials["config_id"].astype(str)
    return trials.sort_values("trial_id").reset_index(drop=True)


def _main_metric(study_file: Path, study: dict[str, Any], trials: pd.DataFrame) -> str:
    """The metric comparisons are decided on (``decisions.verdict_metric``), maximized: a report
    plots and compares an accuracy metric."""
    objectives = study.get("objectives") or []
    if not isinstance(objectives, list) or not all(isinstance(o, dict) and "metric" in o for o in objectives):
        raise ScalingLabError(f"{study_file}: 'objectives' must be a list of {{\"metric\": ..., \"direction\": ...}} objects")
    found = decisions.verdict_metric(objectives, trials.columns)
    if found is not None and found[1]:
        return found[0]
    candidates = [o["metric"] for o in objectives if o.get("direction") == "maximize"] + list(decisions.FALLBACK_METRICS)
    raise ScalingLabError(
        f"{study_file}: none of the metrics {', '.join(dict.fromkeys(candidates))} is a column of the results; "
        "a report needs an accuracy metric to plot"
    )
