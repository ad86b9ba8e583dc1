"""HTML reports of a study's run folder: Pareto fronts, ablations, compound scaling, paper comparison.

``write_report(run_dir, out_dir)`` writes ``index.html`` (self-contained, offline), ``results.csv``
(every trial), ``configurations.csv`` (means over seeds) and, when kaleido can find a Chromium,
``figures/*.png``; for the proxy study, ``findings.md`` (the text of ``docs/proxy-findings.md``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from scaling_lab.report.analysis import configurations
from scaling_lab.report.findings import findings_markdown
from scaling_lab.report.pareto import pareto_front
from scaling_lab.report.run import Run, load_run
from scaling_lab.report.sections import build_page, header

__all__ = ["write_report", "pareto_front", "load_run", "Run"]

log = logging.getLogger(__name__)
PNG_HINT = "pip install kaleido (1.x) and install a Chromium (apt-get install -y chromium, or run plotly_get_chrome)"


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, png: bool = True) -> Path:
    """Write the report of the run folder ``run_dir`` into ``out_dir`` (default ``reports/<study>``).

    Works on a study still running (the page says the results are partial). Returns the path
    of ``index.html``. PNG export problems are logged, never fatal: the HTML is the report.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path("reports") / run.name
    out.mkdir(parents=True, exist_ok=True)
    page = build_page(run)
    index = out / "index.html"
    index.write_text(page.render(header(run)), encoding="utf-8")
    run.trials.to_csv(out / "results.csv", index=False)
    if run.study.get("experiment") == "proxy_findings":
        (out / "findings.md").write_text(findings_markdown(run), encoding="utf-8")
    configurations(run).to_csv(out / "configurations.csv", index=False)
    if png:
        _write_pngs(page.figures, out / "figures")
    return index


def _write_pngs(figures: list, folder: Path) -> None:
    if importlib.util.find_spec("kaleido") is None:
        log.warning("PNG figures skipped: kaleido is not installed. To get them: %s.", PNG_HINT)
        return
    folder.mkdir(exist_ok=True)
    for figure_id, figure in figures:
        try:
            figure.write_image(folder / f"{figure_id}.png", width=1100, height=500)
        except Exception as exc:  # kaleido's errors (no Chrome, a crashed browser) differ between versions
            log.warning("PNG figures skipped: kaleido failed (%s). To get them: %s.", exc, PNG_HINT)
            return
