"""Synthetic results tables with known laws, shaped like a study's (``scaling_lab.study.results``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from scaling_lab.schema import flatten_spec
from scaling_lab.spec_files import load_spec
from scaling_lab.study.search_space import SearchSpace
from tests.helpers import TINY_BASE

# The tiny study base as a spec, at P3-P5 and six classes like the CPU profiles.
BASE_SPEC = load_spec(
    TINY_BASE["base"],
    [f"{key}={value}" for key, value in flatten_spec({k: v for k, v in TINY_BASE.items() if k != "base"}).items()]
    + ["max_level=5", "num_classes=6"],
)
AP = {"metric": "AP", "direction": "maximize"}


def info(**extra) -> dict:
    return {"name": "synthetic", "objectives": [AP], "planned_trials": 0, "finished": True, "base_spec": BASE_SPEC.to_dict(), **extra}


def rows(group: str, params: dict, seeds: int, value, costs: dict | None = None, curve=None, spec: dict | None = None) -> list[dict]:
    """One configuration's trials: ``value(seed)`` gives each seed's metric, ``curve(seed)`` its
    per-epoch validation values."""
    config_id = f"{group}:" + json.dumps(params, sort_keys=True)
    return [
        {
            "state": "complete",
            "config_id": config_id,
            "group": group,
            "seed": seed,
            "AP": float(value(seed)),
            **{f"param.{k}": v for k, v in params.items()},
            **(costs or {}),
            "spec": json.dumps(spec, sort_keys=True) if spec else "",
            "spec_hash": _hash(spec),
            "curve": json.dumps([{"epoch": e + 1, "AP": float(v)} for e, v in enumerate(curve(seed))]) if curve else "[]",
        }
        for seed in range(seeds)
    ]


def _hash(spec: dict | None) -> str:
    from scaling_lab.spec import spec_from_dict

    return spec_from_dict(spec).spec_hash if spec else ""


def table(all_rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(all_rows)
    frame.insert(0, "trial_id", range(len(frame)))
    return frame


def grid_rows(rng: np.random.Generator, optimum=(1.25, 1.08), seeds=3, noise=0.005, alphas=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5), betas=(1.0, 1.05, 1.1, 1.15, 1.2), surface=None) -> list[dict]:
    """A compound grid at phi 1 whose mean AP is a concave quadratic in (ln alpha, ln beta) with
    its maximum at ``optimum`` (or ``surface(ln alpha, ln beta)``)."""
    out = []
    for alpha in alphas:
        for beta in betas:
            if alpha * beta**2 > 2:
                continue
            x, y = math.log(alpha / optimum[0]), math.log(beta / optimum[1])
            mean = surface(math.log(alpha), math.log(beta)) if surface else 0.5 - 3 * x * x - 10 * y * y - 2 * x * y
            gamma = round(math.sqrt(2 / (alpha * beta**2)), 6)
            out += rows("grid", {"alpha": alpha, "beta": beta, "gamma": gamma, "phi": 1}, seeds, lambda s, m=mean: m + rng.normal(0, noise))
    return out


def rule_rows(rng: np.random.Generator, group: str, params: dict, phis, seeds=3, noise=0.005, law=lambda flops: 1 - 0.7 * flops**-0.15, measured=False) -> list[dict]:
    """A scaling rule's phi sweep from the tiny base (so the phi = 0 start is found by spec):
    FLOPs double per phi (or, ``measured``, are fvcore's counts of the built specs) and the mean
    AP follows ``law(FLOPs / 1e8)``."""
    from scaling_lab.study.candidate import cost_counts

    out = []
    for phi in phis:
        spec = SearchSpace(parameters=()).build_spec(BASE_SPEC, {**params, "phi": phi})
        if measured:
            costs = cost_counts(spec)
        else:
            ratio = 2.0**phi
            costs = {"flops": 1e8 * ratio, "params": 1e6 * ratio**0.8, "activations": 1e6 * ratio**0.9}
        costs["latency_ms"] = 5 * (costs["flops"] / 1e8) ** 0.7
        mean = law(costs["flops"] / 1e8)
        out += rows(group, {**params, "phi": phi}, seeds, lambda s, m=mean: m + rng.normal(0, noise), costs, spec=spec.to_dict())
    return out


def write_run(folder: Path, study: dict, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(study))
    frame.to_parquet(folder / "results.parquet", index=False)
    frame.to_csv(folder / "results.csv", index=False)
    return folder
