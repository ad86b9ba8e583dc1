"""The report: a realistic run folder in, a self-contained HTML page (and CSVs) out."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaling_lab import stats
from plotly.offline import get_plotlyjs

from scaling_lab.cli import main
from scaling_lab.errors import ScalingLabError
from scaling_lab.study.results import write_table
from scaling_lab.study.search_space import config_id
from scaling_lab.report import write_report
from scaling_lab.report import analysis, figures, sections
from scaling_lab.report.analysis import ablation_table, compound_grid, configurations, derived_coefficients, fusion_pairs
from scaling_lab.report.figures import colour_labels
from scaling_lab.report.findings import figure_lines
from scaling_lab.report.run import load_run
from scaling_lab.schema import results_table, table_row
from scaling_lab.spec import DetectorSpec

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "reports"
BASE = DetectorSpec()
BASE_FLOPS, BASE_PARAMS, BASE_LATENCY = 2.55e9, 3.88e6, 41.0

# feature network, fusion, AP, params and FLOPs factors (shaped like EfficientDet Table 5, smaller AP)
ABLATION = (
    ("fpn", "sum", 0.300, 1.0, 1.47),
    ("panet", "sum", 0.316, 1.0, 1.47),
    ("nasfpn", "sum", 0.308, 0.71, 1.06),
    ("fcfpn", "sum", 0.307, 1.24, 1.78),
    ("bifpn", "sum", 0.315, 0.88, 0.99),
    ("bifpn", "fast", 0.319, 0.88, 1.0),
    ("bifpn", "softmax", 0.320, 0.88, 1.01),
)


def _spec(width=1.0, depth=1.0, resolution=512, **changes) -> DetectorSpec:
    backbone = {**BASE.backbone.to_dict(), "width": width, "depth": depth}
    return BASE.replace(backbone=backbone, resolution=resolution, **changes)


def write_fixture_run(directory: Path, finished: bool = True) -> Path:
    """A run folder as the studies code writes it: an FPN/fusion ablation, a compound grid,
    compound vs single-dimension scaling, two seeds per configuration and every trial state."""
    rng = np.random.default_rng(7)
    rows: list[dict] = []

    def add(group: str, spec: DetectorSpec, ap: float, flops_factor: float, params_factor: float, seeds=(0, 1), state="complete", error="", params=None):
        for seed in seeds:
            trial_ap = ap + rng.normal(0, 0.003)
            epochs = 6 if state == "complete" else 2
            curve = [
                {"epoch": e, "train_loss": round(1.6 / e + rng.normal(0, 0.02), 4), "AP": round(trial_ap * (1 - 0.5 ** e), 4)}
                for e in range(1, epochs + 1)
            ]
            measured = state in ("complete", "pruned")
            done = state == "complete"
            record = {  # what a study's candidate runner records for a trial
                "spec": spec.to_dict(),
                "spec_hash": spec.spec_hash,
                "params": params or {},
                "error": error,
                "metrics": {"AP": trial_ap, "AP_ci_low": trial_ap - 0.02, "AP_ci_high": trial_ap + 0.015, "AP50": trial_ap + 0.18, "AP75": trial_ap + 0.02} if done else {},
                "costs": {
                    "flops_ratio": flops_factor,
                    **({"flops": BASE_FLOPS * flops_factor} if state != "failed" else {}),
                    **({
                        "params": BASE_PARAMS * params_factor,
                        "activations": 9.1e6 * flops_factor**0.8,
                        "latency_ms": BASE_LATENCY * flops_factor**0.7 * (1.3 if spec.fusion == "softmax" else 1.0),
                    } if measured else {}),
                },
                "wall_time_s": 300.0 * flops_factor if state != "rejected" else 0.0,
                "epochs_done": epochs if measured else 0,
                "curve": curve if measured else [],
                "started": f"2026-11-20T10:{len(rows) % 60:02d}:00",
                "finished": f"2026-11-20T11:{len(rows) % 60:02d}:00",
            }
            # as a study makes the configuration id: per group
            rows.append(table_row(record, trial_id=len(rows), state=state, seed=seed, config_id=config_id(group, {"spec": spec.spec_hash}), group=group, task_kind="detection"))

    for network, fusion, ap, params_factor, flops_factor in ABLATION:
        add("ablation", _spec(feature_network=network, fusion=fusion), ap, flops_factor, params_factor)
    for alpha in (1.1, 1.2, 1.3):
        for beta in (1.0, 1.1, 1.2):
            gamma = math.sqrt(2 / (alpha * beta**2))
            resolution = round(512 * gamma / 128) * 128
            ratio = alpha * beta**2 * (resolution / 512) ** 2
            ap = 0.33 - 0.05 * abs(alpha - 1.2) - 0.06 * abs(beta - 1.1) + 0.02 * math.log2(ratio)
            add("grid", _spec(beta, alpha, resolution), ap, ratio, alpha * beta**2, seeds=(0,),
                params={"alpha": alpha, "beta": beta, "gamma": round(gamma, 3), "phi": 1})
    for phi in range(4):
        scalings = {
            "compound": (1.1**phi, 1.2**phi, 512 + 128 * phi, 0.045),
            "width": (1.0 + 0.4 * phi, 1.0, 512, 0.025),
            "depth": (1.0, 1.0 + 0.8 * phi, 512, 0.02),
            "resolution": (1.0, 1.0, 512 + 128 * phi, 0.03),
        }
        for group, (width, depth, resolution, slope) in scalings.items():
            ratio = width**2 * depth * (resolution / 512) ** 2
            add(group, _spec(round(width, 3), round(depth, 3), resolution), 0.319 + slope * math.log2(ratio), ratio, width**2 * depth, params={"phi": phi})
    add("compound", _spec(1.1**4, 1.2**4, 1024), 0.0, 18.0, 3.0, seeds=(0,), state="rejected",
        error="constraint: flops 45.9e9 exceeds max_flops 40e9", params={"phi": 4})
    add("ablation", _spec(feature_network="fcfpn", fusion="sum", channels=96), 0.0, 2.3, 1.6, seeds=(0,), state="pruned")
    add("ablation", _spec(feature_network="nasfpn", fusion="softmax"), 0.0, 1.1, 0.7, seeds=(0,), state="failed",
        error="FloatingPointError: loss is NaN at epoch 3")
    if not finished:
        add("compound", _spec(1.3, 1.4, 896), 0.0, 5.0, 2.0, seeds=(0,), state="running", params={"phi": 3})

    directory.mkdir(parents=True, exist_ok=True)
    results = results_table(rows)
    write_table(directory, results)
    study_yaml = "name: fixture\nexperiment: fpn_ablation\nobjectives: [AP:max, flops:min, latency_ms:min]\n"
    study = {
        "name": "fixture",
        "experiment": "fpn_ablation",
        "objectives": [
            {"metric": "AP", "direction": "maximize"},
            {"metric": "flops", "direction": "minimize"},
            {"metric": "latency_ms", "direction": "minimize"},
        ],
        "study_file": "studies/fixture.yaml",  # fictitious: the report only names it
        "study_yaml": study_yaml,
        "base_spec": BASE.to_dict(),
        "planned_trials": len(rows) + (0 if finished else 4),
        "finished": finished,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "versions": {"python": "3.11.9", "torch": "2.13.0", "plotly": "7.1.0"},
        "hardware": {"cpu": "2 cores", "gpu": None, "memory_gb": 8},
        "created": "2026-11-20T10:00:00",
    }
    (directory / "study.json").write_text(json.dumps(study, indent=2))
    return directory


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_fixture_run(tmp_path / "runs" / "fixture")


def render_in_chromium(index: Path, screenshot: Path | None = None) -> dict:
    """Load the page in headless Chromium and return the page's own render check (errors, drawn items, requests)."""
    profile = index.parent / ".chromium-profile"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    url = index.resolve().as_uri()
    dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    if screenshot is not None:
        subprocess.run([*command, "--hide-scrollbars", "--window-size=1400,5200", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=120, check=True)
    shutil.rmtree(profile, ignore_errors=True)
    start = dom.index('id="render-check"')
    check = dom[dom.index(">", start) + 1 : dom.index("</pre>", start)]
    assert check, "the page never finished drawing its figures"
    return json.loads(check.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def assert_renders(index: Path, screenshot: Path) -> dict:
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    check = render_in_chromium(index, screenshot)
    assert check["errors"] == []
    assert check["requests"] == [], "the page must not fetch anything"
    assert check["figures"], "the report has no figures"
    for figure in check["figures"]:
        assert figure["points"] + figure["heatmaps"] > 0, f"{figure['id']} drew nothing"
    assert screenshot.stat().st_size > 10_000
    return check


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    index = write_report(run_dir, tmp_path / "report", png=False)
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    check = assert_renders(index, SCREENSHOT_DIR / "fixture-screenshot.png")
    # four fronts, the grid heatmap, the scaling curves, their fitted laws, the proxy fidelity, the training curves
    assert [f["id"] for f in check["figures"]] == [f"figure-{name}" for name in FIXTURE_FIGURES]
    heatmaps = [f for f in check["figures"] if f["heatmaps"]]
    assert len(heatmaps) == 1
    assert all(f["lines"] >= 1 for f in check["figures"] if not f["heatmaps"])
    fronts, scaling = check["figures"][:4], check["figures"][5]
    configurations_drawn = len(configurations(load_run(run_dir)))
    for front in fronts:  # every configuration has its error bar; a legend names the groups and the front
        assert front["errorbars"] == configurations_drawn
        # Pareto front; the ablation's 7 networks with their fusion (fpn, panet, nasfpn, fcfpn with sum,
        # bifpn with sum, fast, softmax); compound, depth, grid, resolution, width
        assert front["legend"] == 1 + 7 + 5
    assert scaling["errorbars"] >= 16 and scaling["legend"] == 4


def test_page_is_self_contained_with_plotly_once(run_dir: Path, tmp_path: Path):
    page = write_report(run_dir, tmp_path / "report", png=False).read_text()
    assert page.count(get_plotlyjs()[:500]) == 1  # plotly.js inlined once for all figures
    assert "<script src=" not in page and "<link" not in page  # (the headless test checks no request is made)


def test_report_outputs_and_sections(run_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    page = write_report(run_dir, out, png=False).read_text()
    trials = pd.read_csv(out / "results.csv")
    assert len(trials) == len(pd.read_parquet(run_dir / "results.parquet"))
    configs = pd.read_csv(out / "configurations.csv")
    assert configs["n_seeds"].max() == 2 and configs["on_front"].any()
    for section in ("Pareto fronts", "Feature-network ablation", "Softmax vs fast", "Compound scaling", "Training curves", "Paper comparison", "Provenance"):
        assert section in page
    assert "Partial results" not in page
    assert "FloatingPointError: loss is NaN" in page and "exceeds max_flops" in page
    assert "1 failed" in page and "1 rejected" in page and "1 pruned" in page


FIXTURE_FIGURES = [
    "pareto-flops", "pareto-params", "pareto-activations", "pareto-latency_ms", "compound-grid", "scaling-rules",
    "scaling-curves-fitted", "proxy-fidelity", "training-curves",
]


def test_figures_are_named_by_what_they_show_and_a_new_section_renames_none(run_dir: Path, monkeypatch):
    run = load_run(run_dir)
    names = [name for name, _ in sections.build_page(run).figures]
    assert names == FIXTURE_FIGURES

    def add_first(page, run, configs):  # a new section with a figure, put first
        page.add("first", "A new first section", page.figure(figures.training_curves_figure(run, analysis.best_trials(run)), "new-figure"))

    monkeypatch.setattr(sections, "SECTIONS", [add_first, *sections.SECTIONS])
    page = sections.build_page(run)
    assert [name for name, _ in page.figures] == ["new-figure", *names]
    assert page.sections[0].title == "A new first section"


def test_seed_means_and_front(run_dir: Path):
    run = load_run(run_dir)
    configs = configurations(run)
    fpn = configs[(configs["group"] == "ablation") & (configs["feature_network"] == "fpn")].iloc[0]
    trials = run.complete[(run.complete["group"] == "ablation") & (run.complete["feature_network"] == "fpn")]
    assert fpn["AP"] == pytest.approx(trials["AP"].mean())
    assert fpn["AP_std"] == pytest.approx(trials["AP"].std(ddof=1))
    assert fpn["seeds"] == "0, 1"
    # failed, pruned and rejected trials never become configurations
    assert set(configs["trial_ids"].str.split(", ").explode().astype(int)) == set(run.complete["trial_id"])


def test_ablation_fusion_and_grid_tables(run_dir: Path):
    run = load_run(run_dir)
    configs = configurations(run)
    ablation = ablation_table(run, configs).set_index("paper_name")
    assert ablation.loc["repeated top-down FPN", "flops_ratio"] == pytest.approx(1.0)
    assert ablation.loc["BiFPN, weighted", "params_ratio"] == pytest.approx(0.88)
    assert ablation.loc["BiFPN, weighted", "flops_ratio"] == pytest.approx(1.0 / 1.47)
    pairs = fusion_pairs(run, configs)
    assert len(pairs) == 1 and pairs["speedup"].iloc[0] == pytest.approx(1.3, rel=0.05)
    grid = compound_grid(run, configs)
    assert len(grid) == 9
    chosen = derived_coefficients(run, grid)
    assert chosen["AP"] == grid.loc[grid["eligible"], "AP"].max()


def test_running_study_is_marked_partial(tmp_path: Path):
    run_dir = write_fixture_run(tmp_path / "runs" / "fixture", finished=False)
    page = write_report(run_dir, tmp_path / "report", png=False).read_text()
    assert "Partial results" in page and "1 running" in page


def test_cli_accepts_run_folder_and_study_yaml(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "a"), "--no-png"]) == 0
    assert (tmp_path / "a" / "index.html").is_file()
    monkeypatch.chdir(tmp_path)  # the fixture lives at runs/fixture under tmp_path
    (tmp_path / "fixture.yaml").write_text("name: fixture\n")
    assert main(["report", "fixture.yaml", "--no-png"]) == 0
    assert (tmp_path / "reports" / "fixture" / "index.html").is_file()
    assert "index.html" in capsys.readouterr().out


def test_bad_run_folders_name_the_problem(tmp_path: Path, run_dir: Path, capsys):
    with pytest.raises(ScalingLabError, match="no study.json"):
        load_run(tmp_path)
    results = pd.read_parquet(run_dir / "results.parquet")
    results.loc[0, "state"] = "exploded"
    results.to_parquet(run_dir / "results.parquet")
    with pytest.raises(ScalingLabError, match=r"results.parquet.*'exploded'.*complete, pruned"):
        load_run(run_dir)
    assert main(["report", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: neither a study file nor a run folder" in capsys.readouterr().err


def test_classification_study_uses_top1(run_dir: Path, tmp_path: Path):
    results = pd.read_parquet(run_dir / "results.parquet")
    results = results.rename(columns={"AP": "top1"}).drop(columns=["AP50", "AP75"])
    results.to_parquet(run_dir / "results.parquet")
    study = json.loads((run_dir / "study.json").read_text())
    study["objectives"][0]["metric"] = "top1"
    study["experiment"] = "pareto"
    (run_dir / "study.json").write_text(json.dumps(study))
    assert load_run(run_dir).main_metric == "top1"
    page = write_report(run_dir, tmp_path / "report", png=False).read_text()
    assert "top1 vs FLOPs" in page and "B7" in page


def test_configuration_intervals_and_possibly_on_front(run_dir: Path):
    run = load_run(run_dir)
    configs = configurations(run)
    fpn = configs[(configs["group"] == "ablation") & (configs["feature_network"] == "fpn")].iloc[0]
    values = run.complete[run.complete["config_id"] == fpn["config_id"]]["AP"]
    half = 12.706 * values.std(ddof=1) / math.sqrt(2)  # two seeds: Student t with 1 degree of freedom
    assert (fpn["AP_ci_low"], fpn["AP_ci_high"]) == pytest.approx((values.mean() - half, values.mean() + half), rel=1e-4)
    assert fpn["interval"] == "seeds"
    # one seed: the seed noise pooled over the configurations with two seeds, not its image bootstrap
    grid_cell = configs[configs["group"] == "grid"].iloc[0]
    pooled = stats.pooled_seed_noise(run.complete, "AP")
    assert grid_cell["interval"] == "pooled seed noise"
    assert grid_cell["AP_ci_high"] - grid_cell["AP_ci_low"] == pytest.approx(min(2 * stats.t_quantile(pooled.df) * pooled.sd, grid_cell["AP_ci_high"] - max(grid_cell["AP"] - stats.t_quantile(pooled.df) * pooled.sd, 0)))
    assert configs["on_front"].le(configs["possibly_on_front"]).all()  # on the front implies possibly on it
    assert (configs["possibly_on_front"] & ~configs["on_front"]).any()


def test_labels_name_what_differs_from_the_base(run_dir: Path):
    run = load_run(run_dir)
    configs = configurations(run).set_index(["group", "config_id"])
    labels = configs["summary"]
    assert labels.str.len().max() < 100
    fpn = configs[configs["feature_network"] == "fpn"]["summary"].iloc[0]
    assert fpn == "feature_network=fpn, fusion=sum"
    width = configs[(configs.index.get_level_values("group") == "width") & (configs["param.phi"] == 2)]["summary"].iloc[0]
    assert width == "width=1.8, phi=2"


def test_scaling_curves_start_at_the_unscaled_base(run_dir: Path):
    results = pd.read_parquet(run_dir / "results.parquet")
    results = results[~((results["param.phi"] == 0) & results["group"].isin(["compound", "width", "depth", "resolution"]))]
    results.to_parquet(run_dir / "results.parquet")  # the study ran phi 1-3 only; the base comes from the ablation group
    run = load_run(run_dir)
    curves = analysis.scaling_groups(run, configurations(run))
    assert set(curves) == {"compound", "width", "depth", "resolution"}
    for curve in curves.values():
        start = curve.iloc[0]
        assert start["param.phi"] == 0 and start["group"] == "ablation" and start["flops"] == pytest.approx(BASE_FLOPS)


def test_comparisons_carry_intervals_and_verdicts(run_dir: Path):
    from scaling_lab.report import comparisons

    run = load_run(run_dir)
    configs = configurations(run)
    ablation = comparisons.ablation_comparisons(run, ablation_table(run, configs)).set_index(["feature_network", "fusion"])
    assert ablation.loc[("fpn", "sum"), "verdict"] == "reference"
    # BiFPN-softmax is 2 AP points above FPN by construction, with 0.3-point seed noise; at two
    # seeds (t at 1 df) and Bonferroni over the section's comparisons it stays unresolved
    row = ablation.loc[("bifpn", "softmax")]
    assert row["paired"] and row["difference"] == pytest.approx(0.02, abs=0.01) and row["seeds_text"] == "paired on seeds 0, 1"
    assert row["level"] == pytest.approx(1 - 0.05 / (len(ablation) - 1)) and row["verdict"] == "unresolved"
    curves = analysis.scaling_groups(run, configs)
    matched = comparisons.scaling_comparisons(run, curves)
    assert set(matched["rule"]) == {"width", "depth", "resolution"} and set(matched["phi"]) == {1, 2, 3}
    assert matched["rule_flops_ratio"].notna().all() and matched["compound_flops_ratio"].notna().all()
    assert set(matched["verdict"]) <= {"better", "worse", "equivalent", "unresolved", "no verdict"}
    # no verdict where the two sides are not at matched FLOPs (measured more than 10 % apart)
    apart = (matched["rule_flops_ratio"] / matched["compound_flops_ratio"] - 1).abs() > 0.10
    assert (matched.loc[apart, "verdict"] == "no verdict").all() and (matched.loc[~apart, "verdict"] != "no verdict").all()
    # where a rule's curve reaches around compound's FLOPs it is read there, interpolated in log FLOPs: the
    # fixture's AP is 0.319 + slope * log2(FLOPs ratio) per rule (seed noise 0.003), so the answer is known
    interpolated = matched[matched["rule_points"] != "measured"].set_index(["phi", "rule"])
    assert set(interpolated.index) == {(1, "width"), (1, "depth"), (1, "resolution"), (2, "width")}
    assert (interpolated["rule_flops_ratio"] == interpolated["compound_flops_ratio"]).all()
    assert interpolated.loc[(1, "depth"), "rule_points"] == "interpolated in log FLOPs between 1.80x and 2.60x"
    slopes = {"width": 0.025, "depth": 0.02, "resolution": 0.03}
    for (phi, rule), row in interpolated.iterrows():
        expected = (0.045 - slopes[rule]) * math.log2(row["compound_flops_ratio"])
        assert row["difference"] == pytest.approx(expected, abs=0.006) and row["diff_low"] < expected < row["diff_high"]
        assert row["seeds_text"] == "paired on seeds 0, 1"
    grid = compound_grid(run, configs)
    others = comparisons.runners_up(run, grid, derived_coefficients(run, grid))
    assert len(others) >= 1 and (others["difference"] <= 0).all()  # nobody beats the winner on the mean


def test_fpn_with_fast_fusion_is_not_the_papers_fpn(run_dir: Path):
    from scaling_lab import paper

    assert paper.feature_network_row("fpn", "sum").name == "repeated top-down FPN"
    assert paper.feature_network_row("fpn", "fast") is None and paper.feature_network_row("panet", "fast") is None


def test_proxy_findings_markdown(run_dir: Path, tmp_path: Path):
    study = json.loads((run_dir / "study.json").read_text())
    study["experiment"] = "proxy_findings"
    (run_dir / "study.json").write_text(json.dumps(study))
    out = tmp_path / "report"
    page = write_report(run_dir, out, png=False).read_text()
    findings = (out / "findings.md").read_text()
    assert "Paper comparison: EfficientDet Table 5" in page and "Paper comparison: EfficientNet section 3.3" in page
    assert "| BiFPN, weighted | fast |" in findings and "+2.10 |" in findings  # the paper's 44.39 − 42.29 beside ours
    assert "Weighted (fast) − unweighted (sum) BiFPN:" in findings and "(paper: +0.45 AP)" in findings
    assert findings.count("| 1 | ") == 3 and "| +2.1 |" in findings  # compound vs depth at phi 1, paper 81.1 − 79.0
    assert all(verdict in findings for verdict in ("reference", "better"))
    assert "No figures" in findings  # png=False; with PNGs each is shown under its title:
    assert figure_lines([("figures/pareto-flops.png", "Pareto front")]) == ["### Pareto front", "", "![Pareto front](figures/pareto-flops.png)", ""]


def test_points_are_coloured_by_what_differs_within_a_group():
    configs = pd.DataFrame(
        {
            "group": ["ablation"] * 4 + ["compound"] * 2,
            "feature_network": ["fpn", "panet", "bifpn", "bifpn", "bifpn", "bifpn"],
            "fusion": ["sum", "sum", "sum", "fast", "fast", "fast"],
        }
    )
    assert colour_labels(configs).tolist() == [
        "group ablation · fpn · sum",
        "group ablation · panet · sum",
        "group ablation · bifpn · sum",
        "group ablation · bifpn · fast",
        "group compound · bifpn · fast",
        "group compound · bifpn · fast",
    ]
    assert colour_labels(configs[configs["group"] == "compound"]).tolist() == ["group compound"] * 2


def test_a_rectangular_resolution_is_one_text_column_beside_square_ones(tmp_path: Path):
    specs = [DetectorSpec(resolution=512), DetectorSpec(resolution=(384, 640))]
    rows = [
        table_row({"spec": spec.to_dict(), "spec_hash": spec.spec_hash}, trial_id=i, state="complete", seed=0, config_id=str(i), group="g", task_kind="detection")
        for i, spec in enumerate(specs)
    ]
    assert rows[1]["resolution"] == rows[1]["backbone.resolution"] == "[384, 640]"  # both sides, as the spec writes them
    table = results_table(rows)
    assert table["resolution"].tolist() == ["512", "[384, 640]"]
    write_table(tmp_path, table)  # a column of text, storable beside the numbers
