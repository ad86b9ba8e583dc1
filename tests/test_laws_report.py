"""The report's scaling-law sections on synthetic run folders: each appears with its figure
where the data supports it, and says why where a fit fails."""

import numpy as np

from scaling_lab.report import write_report
from tests.laws_tables import grid_rows, info, rows, rule_rows, table, write_run


def test_sections_and_figures(tmp_path):
    rng = np.random.default_rng(0)
    grid = grid_rows(rng)
    for row in grid:
        row.update(flops=2e8, curve='[{"epoch": 1, "AP": %f}, {"epoch": 2, "AP": %f}]' % (row["AP"] * 0.5, row["AP"]))
    frame = table(grid + rule_rows(rng, "compound", {"alpha": 1.2, "beta": 1.1, "gamma": 1.15}, [0, 1, 2, 3]) + rule_rows(rng, "width", {"beta": 1.6691}, [1, 2, 3]))
    run = write_run(tmp_path / "run", info(derive_group="grid", seeds=[0, 1, 2]), frame)
    page = (tmp_path / "report").joinpath("index.html")
    write_report(run, tmp_path / "report", png=False)
    html = page.read_text()
    for title in ("Fitted coefficients (response surface)", "Scaling laws", "Proxy fidelity"):
        assert title in html
    assert "fitted optimum" in html and "activations ∝ FLOPs^k" in html and "Kendall tau" in html
    assert "Design spaces" not in html  # a grid is no random sample


def test_a_failed_fit_says_why_and_random_samples_get_edfs(tmp_path):
    out = []
    for i in range(6):
        out += rows("search", {"channels": 8 * (i + 1)}, 1, lambda s, i=i: 0.1 + 0.01 * i, {"flops": 1e8 * (1 + i)})
    out += rows("grid", {"alpha": 1.2, "beta": 1.1, "gamma": 1.17, "phi": 1}, 1, lambda s: 0.2, {"flops": 2e8})
    out += rows("grid", {"alpha": 1.0, "beta": 1.1, "gamma": 1.28, "phi": 1}, 1, lambda s: 0.2, {"flops": 2e8})
    run = write_run(tmp_path / "run", info(definition={"sampler": {"type": "random"}}), table(out))
    write_report(run, tmp_path / "report", png=False)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "No response surface: " in html and "too few points for the response surface" in html
    assert "error EDFs normalized over complexity" in html
