"""docs/proxy-findings.md is re-derived from its committed run folder: every generated table of the
page equals what the report computes from ``docs/proxy-findings/`` (study.json, results.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling_lab.cli import main
from scaling_lab.errors import ScalingLabError
from scaling_lab.report import load_run
from scaling_lab.report.findings import BLOCKS, refresh_document
from tests.test_report import write_fixture_run

ROOT = Path(__file__).resolve().parents[1]
PAGE, RUN = ROOT / "docs" / "proxy-findings.md", ROOT / "docs" / "proxy-findings"


def test_the_committed_page_is_what_its_committed_run_gives():
    text = PAGE.read_text(encoding="utf-8")
    assert all(f"<!-- scaling-lab: {name} -->" in text for name in BLOCKS)  # every table of the page is generated
    assert refresh_document(text, load_run(RUN), str(PAGE)) == text, "run: scaling-lab report docs/proxy-findings --document docs/proxy-findings.md"


def test_the_committed_run_is_the_adaptive_study_it_describes():
    study = json.loads((RUN / "study.json").read_text())
    assert study["name"] == "proxy_findings" and study["finished"]
    assert study["repeats"]["until"] == "resolved" and study["adaptive_repeats"]["stop"] in ("resolved", "max", "budget")
    run = load_run(RUN)
    assert (run.trials["state"] == "complete").all()
    assert run.trials.groupby("config_id")["seed"].nunique().min() >= study["repeats"]["min"]


def _fixture(tmp_path: Path) -> Path:
    folder = write_fixture_run(tmp_path / "runs" / "fixture")
    study = json.loads((folder / "study.json").read_text())
    study["experiment"] = "proxy_findings"
    (folder / "study.json").write_text(json.dumps(study))
    return folder


def test_refresh_fills_blocks_keeps_prose_and_is_stable(tmp_path: Path, capsys):
    folder = _fixture(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("# Mine\n\nprose before\n<!-- scaling-lab: feature-networks -->\nstale\n<!-- /scaling-lab: feature-networks -->\nprose after\n")
    assert main(["report", str(folder), "--document", str(page)]) == 0
    once = page.read_text()
    assert "stale" not in once and "| feature network | fusion |" in once
    assert once.startswith("# Mine\n\nprose before\n") and once.endswith("<!-- /scaling-lab: feature-networks -->\nprose after\n")
    assert refresh_document(once, load_run(folder), "page.md") == once
    assert not (folder / "report").exists()  # --document writes the page only


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no blocks at all\n", "no generated blocks"),
        ("<!-- scaling-lab: tables -->\n<!-- /scaling-lab: tables -->\n", "unknown generated block(s) tables"),
    ],
)
def test_a_page_without_valid_blocks_is_named(tmp_path: Path, text: str, expected: str):
    folder = _fixture(tmp_path)
    with pytest.raises(ScalingLabError, match=r"page\.md: " + expected.replace("(", r"\(").replace(")", r"\)")):
        refresh_document(text, load_run(folder), "page.md")


def test_a_missing_page_is_named(tmp_path: Path, capsys):
    assert main(["report", str(_fixture(tmp_path)), "--document", str(tmp_path / "nothing.md")]) == 2
    assert "nothing.md: no such file; give a Markdown page with generated blocks" in capsys.readouterr().err
