"""``scaling-lab recommend``: the best predicted spec within a budget, written as a spec file
that ``train`` reads, with its evidence and an extrapolation warning; bad budgets are errors."""

import numpy as np
import pytest
import yaml

from scaling_lab.cli import main
from scaling_lab.errors import ScalingLabError
from scaling_lab.laws.recommend import parse_budget, recommend
from scaling_lab.spec_files import load_spec
from tests.laws_tables import info, rule_rows, table, write_run


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    frame = table(
        rule_rows(rng, "compound", {"alpha": 1.2, "beta": 1.1, "gamma": 1.15}, [0, 1, 2, 3], measured=True)
        + rule_rows(rng, "width", {"beta": 1.6691}, [1, 2, 3], measured=True, law=lambda r: 1 - 0.75 * r**-0.12)
    )
    return info(), frame


@pytest.mark.parametrize("kind, text, value", [("flops", "10G", 1e10), ("flops", "2.5e9", 2.5e9), ("params", "400k", 4e5), ("latency", "20ms", 20.0), ("latency", "0.02s", 20.0), ("latency", "7", 7.0)])
def test_budgets_parse(kind, text, value):
    assert parse_budget(kind, text) == pytest.approx(value)


@pytest.mark.parametrize("kind, text", [("flops", "ten"), ("flops", "10X"), ("latency", "20G"), ("params", "-5M")])
def test_bad_budgets_are_clear_errors(kind, text):
    with pytest.raises(ScalingLabError, match=f"--{kind} '{text}' is not a budget"):
        parse_budget(kind, text)


def test_within_the_measured_range_the_best_prediction_wins_without_extrapolation(study):
    info_, frame = study
    budget = 0.9 * frame.loc[frame["group"] == "compound", "flops"].max()
    found = recommend(info_, frame, "synthetic", "flops", budget, replicates=100)
    assert all(c.cost <= budget for c in found.candidates) and not found.best.extrapolated
    assert {c.source.split(" at ")[0] for c in found.candidates} >= {"rule compound", "rule width"}
    assert found.best.value == max(c.value for c in found.candidates)
    assert found.best.low < found.best.value < found.best.high
    assert "evidence: the width curve fitted on 4 configurations" in found.to_text()  # width's start is compound's phi 0


def test_beyond_the_measured_range_it_warns_and_writes_a_spec_file_train_reads(study, tmp_path, capsys):
    info_, frame = study
    run = write_run(tmp_path / "run", info_, frame)
    budget = 1.5 * frame["flops"].max()
    assert main(["recommend", str(run), "--flops", f"{budget:.0f}", "--out", str(tmp_path / "best.yaml")]) == 0
    out = capsys.readouterr().out
    assert "WARNING: extrapolation" in out and "rule compound at phi" in out
    spec = load_spec(str(tmp_path / "best.yaml"))
    assert spec.resolution > 128 and spec.backbone.depth > 0.25
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith("# scaling-lab recommend: best predicted") and yaml.safe_load(text)["kind"] == "detector"


def test_latency_budgets_use_the_measured_latencies(study):
    info_, frame = study
    found = recommend(info_, frame, "synthetic", "latency", 6.0, replicates=50)
    assert found.best.cost <= 6.0
    with pytest.raises(ScalingLabError, match="no latency_ms values"):
        recommend(info_, frame.assign(latency_ms=np.nan), "synthetic", "latency", 6.0)


def test_cli_errors(study, tmp_path, capsys):
    info_, frame = study
    run = write_run(tmp_path / "run", info_, frame)
    assert main(["recommend", str(run), "--flops", "ten"]) == 2
    assert "--flops 'ten' is not a budget" in capsys.readouterr().err
    assert main(["recommend", str(run), "--flops", "1"]) == 2
    assert "raise the budget" in capsys.readouterr().err
    bare = write_run(tmp_path / "bare", info_, frame.drop(columns=["flops"]))
    assert main(["recommend", str(bare), "--flops", "1G"]) == 2
    assert "no flops values" in capsys.readouterr().err
