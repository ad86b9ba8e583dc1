"""The per-trial bootstrap of AP against COCOeval's own evaluation, on a few thousand images.

    PYTHONPATH=. python benchmarks/bootstrap_speed.py [--images 3000]

Prints the time of COCOeval (evaluate + accumulate) and of the 200-replicate bootstrap on the
same matches, and their ratio; the issue's target is "well under the evaluation's own time".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

from pycocotools.cocoeval import COCOeval

from scaling_lab.train.bootstrap import BOOTSTRAP_REPLICATES, bootstrap_ap
from tests.test_stats import scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    images = parser.parse_args().images
    coco, results = scenes(images, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluated = time.perf_counter() - start
    start = time.perf_counter()
    intervals = bootstrap_ap(evaluator)
    bootstrapped = time.perf_counter() - start
    print(f"{images} images, {len(results)} detections: COCOeval {evaluated:.2f} s, "
          f"bootstrap ({BOOTSTRAP_REPLICATES} replicates) {bootstrapped:.2f} s = {bootstrapped / evaluated:.2f}x COCOeval; "
          f"AP interval [{intervals['AP_ci_low']:.3f}, {intervals['AP_ci_high']:.3f}]")


if __name__ == "__main__":
    main()
