"""The README's main job, shrunk: the quickstart study runs end to end through the command line
and its report renders in headless Chromium (the screenshot is kept under reports/)."""

import json
from pathlib import Path

import pytest

from scaling_lab.cli import main
from tests.test_report import CHROMIUM, SCREENSHOT_DIR, assert_renders

QUICKSTART = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"
SHRINK = ["task.epochs=2", "task.eval_every=1", "task.synthetic.train_images=16", "task.synthetic.val_images=8"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_quickstart_runs_and_its_report_renders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    arguments = [arg for change in SHRINK for arg in ("--set", change)]
    assert main(["run", str(QUICKSTART), *arguments]) == 0
    assert main(["status", "runs/quickstart", "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["complete"] == status["planned_trials"] == 5
    index = tmp_path / "reports" / "quickstart" / "index.html"
    check = assert_renders(index, SCREENSHOT_DIR / "quickstart-screenshot.png")
    assert len(check["figures"]) >= 5  # four fronts and the scaling curve, at least
    pngs = sorted((index.parent / "figures").glob("*.png"))  # kaleido drives the same Chromium
    assert {"pareto-flops.png", "scaling-rules.png", "training-curves.png"} <= {png.name for png in pngs}
    assert len(pngs) == len(check["figures"]) and all(png.stat().st_size > 10_000 for png in pngs)
