"""HTML reports of a study's run folder: Pareto fronts, ablations, compound scaling, paper comparison.

``write_report(run_dir, out_dir)`` writes ``index.html`` (self-contained, offline), ``results.csv``
(every trial), ``configurations.csv`` (means over seeds) and, when kaleido can find a Chromium,
``figures/*.png``; for the proxy study, ``findings.md`` (the text of ``docs/proxy-findings.md``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import plotly.io

from scaling_lab.files import atomic_write, atomic_write_text, check_output_folder
from scaling_lab.report.analysis import configurations
from scaling_lab.report.findings import findings_markdown
from scaling_lab.pareto import pareto_front
from scaling_lab.report.run import Run, load_run
from scaling_lab.report.sections import build_page, header

__all__ = ["write_report", "report_dir_for", "pareto_front", "load_run", "Run"]

log = logging.getLogger(__name__)
PNG_HINT = "pip install kaleido (1.x) and install a Chromium (apt-get install -y chromium, or run plotly_get_chrome)"


def report_dir_for(run_dir: str | Path) -> Path:
    """Where a run folder's report goes by default: ``reports/<run folder name>/`` beside a
    ``runs/`` folder (``runs/quickstart`` -> ``reports/quickstart``), else ``<run folder>/report``.
    Each run folder has its own, so a second run of a study never overwrites the first's report."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent.name == "runs":
        return run_dir.parent.parent / "reports" / run_dir.name
    return run_dir / "report"


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, png: bool = True) -> Path:
    """Write the report of the run folder ``run_dir`` into ``out_dir`` (default ``report_dir_for``).

    Works on a study still running (the page says the results are partial). Returns the path
    of ``index.html``. PNG export problems are logged, never fatal: the HTML is the report.
    """
    run = load_run(run_dir)
    out = check_output_folder(Path(out_dir) if out_dir is not None else report_dir_for(run_dir), "report folder")
    out.mkdir(parents=True, exist_ok=True)
    page = build_page(run)
    index = out / "index.html"
    atomic_write_text(index, page.render(header(run)))
    atomic_write(out / "results.csv", lambda temporary: run.trials.to_csv(temporary, index=False))
    atomic_write(out / "configurations.csv", lambda temporary: configurations(run).to_csv(temporary, index=False))
    pngs = _write_pngs(page.figures, out / "figures") if png else []
    if run.study.get("experiment") == "proxy_findings":
        atomic_write_text(out / "findings.md", findings_markdown(run, [(f"figures/{path.name}", title) for path, title in pngs]))
    return index


def _write_pngs(figures: list, folder: Path) -> list[tuple[Path, str]]:
    """Each figure as a PNG; returns (path, title) of those written (none when kaleido cannot run)."""
    if importlib.util.find_spec("kaleido") is None:
        log.warning("PNG figures skipped: kaleido is not installed. To get them: %s.", PNG_HINT)
        return []
    if not figures:
        return []
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{name}.png" for name, _ in figures]
    try:  # all in one Chromium: write_image would start one per figure (5 times slower for the quickstart's 7)
        plotly.io.write_images([figure for _, figure in figures], paths, width=1100, height=500)
    except Exception as exc:  # kaleido's errors (no Chrome, a crashed browser) differ between versions
        first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        log.warning("PNG figures skipped: kaleido failed (%s). To get them: %s; or pass --no-png.", first_line[:160], PNG_HINT)
        return []
    return [(path, figure.layout.title.text or name) for path, (name, figure) in zip(paths, figures)]
