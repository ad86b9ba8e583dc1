"""The papers' tables beside ours, keyed by the study's experiment: each entry builds one
comparison (its source and HTML) from the run's configurations, or None without the data."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from scaling_lab import paper
from scaling_lab.report import analysis
from scaling_lab.report.figures import human, scale
from scaling_lab.report.formats import number, percent, ratio, text
from scaling_lab.report.html import Page, definitions, paragraph, side_by_side, table
from scaling_lab.report.run import Run

PaperTable = Callable[[Run, pd.DataFrame], "tuple[str, str] | None"]


def feature_network_table(run: Run, configs: pd.DataFrame) -> tuple[str, str] | None:
    metric = run.main_metric
    ours = analysis.ablation_table(run, configs)
    if ours.empty:
        return None
    reference = pd.DataFrame([vars(row) for row in paper.FEATURE_NETWORKS])
    merged = reference.merge(ours, left_on="name", right_on="paper_name", how="left", suffixes=("_paper", ""))
    body = table(
        merged,
        {
            "name": ("feature network", text),
            "ap": ("paper AP", number(4)),
            f"{metric}": (f"our {metric}", percent(metric)),
            "params_ratio_paper": ("paper #params", ratio),
            "params_ratio": ("our #params", ratio),
            "flops_ratio_paper": ("paper #FLOPs", ratio),
            "flops_ratio": ("our #FLOPs", ratio),
        },
    )
    return "EfficientDet Table 5 (COCO val, EfficientNet-B3 backbone)", body


def fusion_table(run: Run, configs: pd.DataFrame) -> tuple[str, str] | None:
    metric = run.main_metric
    ours = analysis.fusion_pairs(run, configs)
    if ours.empty:
        return None
    reference = pd.DataFrame([vars(row) for row in paper.FUSIONS])
    body = side_by_side(
        ("paper", table(reference, {"model": ("model", text), "softmax_ap": ("softmax AP", number(4)), "fast_ap": ("fast AP", number(4)), "speedup": ("speedup", ratio)})),
        ("ours", table(ours, {c: (c.replace("_", " "), ratio if c == "speedup" else percent(metric) if c.startswith(metric) else number() if c.startswith("latency") else text) for c in ours.columns})),
    )
    return "EfficientDet Table 6 (GPU speedup of fast over softmax fusion)", body


def compound_table(run: Run, configs: pd.DataFrame) -> tuple[str, str] | None:
    metric = run.main_metric
    grid = analysis.compound_grid(run, configs)
    curves = analysis.scaling_groups(run, configs)
    chosen = analysis.derived_coefficients(run, grid) if not grid.empty else None
    parts = []
    if chosen is not None:
        parts.append(("coefficients", definitions({name: f"paper {value:g}, ours {chosen['param.' + name]:g}" for name, value in paper.COMPOUND_COEFFICIENTS.items()})))
    if curves:
        reference = pd.DataFrame([vars(row) for row in paper.SINGLE_DIMENSION_SCALING])
        baseline = reference.iloc[0]
        reference["flops_ratio"] = reference["flops"] / baseline["flops"]
        reference["gain"] = reference["top1"] - baseline["top1"]
        parts.append(("paper: EfficientNet Table 7 (top-1 gain over B0)", table(reference, {"scaling": ("scaling", text), "flops_ratio": ("FLOPs", ratio), "gain": ("top-1 gain", number(3))})))
        ours = analysis.scaling_gains(run, curves)
        parts.append((f"ours: largest model per rule ({metric} gain over the smallest)", table(ours, {"group": ("scaling", text), "summary": ("configuration", text), "flops_ratio": ("FLOPs", ratio), "gain": (f"{metric} gain (points)", lambda v: f"{v * scale(metric):+.2f}")})))
    if not parts:
        return None
    return "EfficientNet section 3.3 and Table 7", side_by_side(*parts)


def pareto_table(run: Run, configs: pd.DataFrame) -> tuple[str, str] | None:
    metric = run.main_metric
    rows = paper.EFFICIENTDET if metric.startswith("AP") else paper.EFFICIENTNET
    reference = pd.DataFrame([vars(row) for row in rows])
    accuracy = "ap_val" if metric.startswith("AP") else "top1"
    front = configs[configs["on_front"]].sort_values("flops" if "flops" in configs else metric)
    body = side_by_side(
        ("paper", table(reference, {"name": ("model", text), "params": ("params", human), "flops": ("FLOPs", human), accuracy: (accuracy, number(3))})),
        ("our front", table(front, {"summary": ("configuration", text), **{c: (c, human) for c in ("params", "flops") if c in front}, metric: (metric, percent(metric))})),
    )
    return "EfficientDet Table 2 / EfficientNet Table 2", body


# Experiment name (a study's ``experiment`` key) -> the paper comparisons its report shows; the
# proxy study asks both papers' questions.
PAPER_TABLES: dict[str, tuple[PaperTable, ...]] = {
    "fpn_ablation": (feature_network_table,),
    "fusion_ablation": (fusion_table,),
    "compound_grid": (compound_table,),
    "pareto": (pareto_table,),
    "proxy_findings": (feature_network_table, compound_table),
}


def add_paper(page: Page, run: Run, configs: pd.DataFrame) -> None:
    tables = PAPER_TABLES.get(str(run.study.get("experiment")), ()) if not configs.empty else ()
    for paper_table in tables:
        found = paper_table(run, configs)
        if found is not None:
            source, body = found
            name = paper_table.__name__.removesuffix("_table").replace("_", "-")
            anchor, title = ("paper", "Paper comparison") if len(tables) == 1 else (f"paper-{name}", f"Paper comparison: {source.split(' (')[0]}")
            note = paragraph(f"{source}. The paper's absolute numbers come from full COCO/ImageNet training; compare trends and ratios.")
            page.add(anchor, title, note, body)
