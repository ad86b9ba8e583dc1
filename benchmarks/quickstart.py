"""The README's main command, timed: ``scaling-lab run studies/quickstart.yaml`` with its report,
from an empty cache (synthetic data, measurements and latencies made afresh) into a fresh run folder.

    python benchmarks/quickstart.py                               # this checkout, once
    python benchmarks/quickstart.py --repeats 3 /path/to/other    # A/B: this checkout and another, alternated

Each checkout runs with its own ``.venv`` (``./scripts/setup``) and its own study file. Runs
alternate between the checkouts (A B A B ...), so a machine whose load drifts weighs on both
alike. Per run it prints the wall time and the CPU time (user + sys of the command and the
processes it waits for: far less sensitive than the wall time to other work on the machine, but
blind to a local Ray's workers, which the command does not wait for: compare it only between
runs of one backend) and each configuration's AP, by configuration id (the same order whatever
order the trials ran in); then the medians per checkout and their ratios to the first checkout.
Two runs of one checkout must give the same APs bit for bit.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent.parent
STUDY = "studies/quickstart.yaml"


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(checkout: Path, folder: Path, overrides: list[str]) -> tuple[float, float, list[float]]:
    """Wall and CPU seconds of one run of the main command in ``folder`` (empty), and the trials' APs."""
    environment = {**os.environ, "SCALING_LAB_CACHE": str(folder / "cache"), "RAY_AUTH_MODE": "disabled"}
    command = [str(checkout / ".venv" / "bin" / "scaling-lab"), "run", str(checkout / STUDY)]
    command += [argument for override in overrides for argument in ("--set", override)]
    cpu, started = children_cpu_s(), time.perf_counter()
    finished = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({finished.returncode}):\n{finished.stdout}\n{finished.stderr}")
    if not (folder / "reports" / "quickstart" / "index.html").is_file():
        sys.exit(f"{checkout}: no report written under {folder / 'reports' / 'quickstart'}")
    table = pd.read_parquet(folder / "runs" / "quickstart" / "results.parquet").sort_values("config_id")
    return wall, cpu, table["AP"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("others", nargs="*", type=Path, help="other checkouts to compare with this one (each with its .venv)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each checkout (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to run (a smaller study to try the script; not the README's figure)")
    parser.add_argument("--keep", type=Path, help="keep each run's folder under this folder (default: a temporary folder, removed)")
    args = parser.parse_args()
    checkouts = [HERE, *(path.resolve() for path in args.others)]
    figures: dict[Path, list[tuple[float, float]]] = {checkout: [] for checkout in checkouts}
    aps: dict[Path, list[list[float]]] = {checkout: [] for checkout in checkouts}
    with tempfile.TemporaryDirectory(prefix="quickstart-benchmark-") as scratch:
        root = args.keep or Path(scratch)
        for repeat in range(args.repeats):
            for index, checkout in enumerate(checkouts):
                folder = root / f"run-{repeat}-{index}"
                folder.mkdir(parents=True)
                wall, cpu, ap = run_once(checkout, folder, args.set)
                figures[checkout].append((wall, cpu))
                aps[checkout].append(ap)
                print(f"{checkout}: wall {wall:.1f} s, CPU {cpu:.1f} s, AP {' '.join(f'{value:.4f}' for value in ap)}", flush=True)
    first_wall, first_cpu = (statistics.median(values) for values in zip(*figures[HERE]))
    for checkout in checkouts:
        wall, cpu = (statistics.median(values) for values in zip(*figures[checkout]))
        same = all(run == aps[checkout][0] for run in aps[checkout])
        print(
            f"{checkout}: median of {args.repeats}: wall {wall:.1f} s ({wall / first_wall:.3f} x this checkout's), "
            f"CPU {cpu:.1f} s ({cpu / first_cpu:.3f} x); APs {'identical' if same else 'DIFFER'} between its runs"
        )


if __name__ == "__main__":
    main()
