"""Uncertainty: the bootstrap over validation images and the seed/paired comparisons (``scaling_lab.stats``)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scaling_lab import stats
from scaling_lab.train import coco_metrics
from scaling_lab.train.bootstrap import bootstrap_ap, reaccumulate

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 3, "name": "disc"}]


def scenes(count: int, seed: int = 0, identical: bool = False) -> tuple[COCO, list[dict]]:
    """``count`` 100x100 images with 1-3 objects each, and noisy detections: jittered boxes
    (some badly), missed objects and false positives, with scores that favour good boxes."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    state = rng.bit_generator.state
    for image_id in range(1, count + 1):
        if identical:
            rng.bit_generator.state = state  # every image the same scene and the same detections
        images.append({"id": image_id, "width": 100, "height": 100})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = rng.uniform(0, 50), rng.uniform(0, 50), rng.uniform(10, 50), rng.uniform(10, 50)
            category = int(rng.choice([1, 3]))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.uniform() < 0.8:
                jitter = rng.normal(0, rng.choice([1.0, 6.0]), 4)
                results.append({"image_id": image_id, "category_id": category, "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]], "score": float(rng.uniform(0.3, 1.0))})
        for _ in range(rng.integers(0, 3)):
            results.append({"image_id": image_id, "category_id": int(rng.choice([1, 3])), "bbox": [*rng.uniform(0, 60, 2), *rng.uniform(10, 40, 2)], "score": float(rng.uniform(0.0, 0.7))})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, results


def evaluated(coco: COCO, results: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def perfect(coco: COCO) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in coco.dataset["annotations"]]


# --------------------------------------------------------------------------------------------
# Bootstrap over validation images


def test_reaccumulating_with_unit_weights_reproduces_cocoeval():
    evaluator = evaluated(*scenes(60, seed=1))
    ap, ap50 = reaccumulate(evaluator, np.ones(60))
    assert 0.1 < evaluator.stats[0] < 0.9  # an imperfect detector, so the check means something
    assert ap[0] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert ap50[0] == pytest.approx(evaluator.stats[1], abs=1e-12)


def duplicated(coco: COCO, results: list[dict], weights: np.ndarray) -> COCOeval:
    """COCOeval of the resample written out: each image copied ``weight`` times under new ids."""
    images, annotations, copies = [], [], []
    for image, weight in zip(coco.dataset["images"], weights):
        for _ in range(int(weight)):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            for annotation in (a for a in coco.dataset["annotations"] if a["image_id"] == image["id"]):
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": new_id})
            copies += [{**r, "image_id": new_id} for r in results if r["image_id"] == image["id"]]
    copy = COCO()
    copy.dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return evaluated(copy, copies)


def test_every_replicate_equals_cocoeval_on_the_duplicated_images():
    # Replicates are re-accumulated together; each row must be COCOeval's AP of its resample, to
    # 1e-9 (a shared search over rows once shifted recalls such as 0.7 past the threshold 0.7000000000000001).
    coco, results = scenes(20, seed=2)
    weights = np.random.default_rng(11).multinomial(20, np.full(20, 1 / 20), size=40)
    ap, ap50 = reaccumulate(evaluated(coco, [dict(r) for r in results]), weights)
    for row, row_weights in enumerate(weights):
        reference = duplicated(coco, results, row_weights)
        assert ap[row] == pytest.approx(reference.stats[0], abs=1e-9), f"replicate {row}"
        assert ap50[row] == pytest.approx(reference.stats[1], abs=1e-9), f"replicate {row}"


def test_identical_images_give_a_zero_width_interval():
    coco, results = scenes(40, seed=3, identical=True)
    metrics = coco_metrics(coco, results, coco.getImgIds())
    assert 0 < metrics["AP"] < 1
    assert metrics["AP_ci_low"] == pytest.approx(metrics["AP"]) and metrics["AP_ci_high"] == pytest.approx(metrics["AP"])
    assert metrics["AP50_ci_low"] == pytest.approx(metrics["AP50_ci_high"])


def test_a_perfect_detector_has_the_interval_1_1():
    coco, _ = scenes(50, seed=4)
    metrics = coco_metrics(coco, perfect(coco), coco.getImgIds())
    assert metrics["AP"] == pytest.approx(1.0)
    assert (metrics["AP_ci_low"], metrics["AP_ci_high"]) == pytest.approx((1.0, 1.0))
    assert (metrics["AP50_ci_low"], metrics["AP50_ci_high"]) == pytest.approx((1.0, 1.0))


def test_no_detections_have_the_interval_0_0():
    coco, _ = scenes(10, seed=5)
    metrics = coco_metrics(coco, [], coco.getImgIds())
    assert (metrics["AP"], metrics["AP_ci_low"], metrics["AP_ci_high"]) == (0.0, 0.0, 0.0)


def test_the_interval_contains_the_estimate_and_narrows_as_images_grow():
    widths = []
    for count in (20, 80, 320):
        coco, results = scenes(count, seed=6)
        metrics = coco_metrics(coco, results, coco.getImgIds())
        assert metrics["AP_ci_low"] < metrics["AP"] < metrics["AP_ci_high"]
        assert metrics["AP50_ci_low"] < metrics["AP50"] < metrics["AP50_ci_high"]
        widths.append(metrics["AP_ci_high"] - metrics["AP_ci_low"])
    # the width falls like 1/sqrt(images): about half for four times the images
    assert widths[1] < 0.75 * widths[0] and widths[2] < 0.75 * widths[1]


def test_the_bootstrap_is_seeded():
    evaluator = evaluated(*scenes(30, seed=7))
    assert bootstrap_ap(evaluator) == bootstrap_ap(evaluator)
    assert bootstrap_ap(evaluator, seed=1) != bootstrap_ap(evaluator, seed=2)


# --------------------------------------------------------------------------------------------
# Seeds and comparisons


def test_t_quantiles_match_the_tables():
    assert [round(stats.t_quantile(df), 3) for df in (1, 2, 4, 9, 29)] == [12.706, 4.303, 2.776, 2.262, 2.045]
    assert stats.t_quantile(math.inf) == pytest.approx(1.96, abs=1e-3)


def test_estimate_over_seeds_and_from_the_bootstrap():
    found = stats.estimate([0.30, 0.32, 0.34])
    assert (found.mean, found.sd, found.n, found.source) == (pytest.approx(0.32), pytest.approx(0.02), 3, "seeds")
    assert found.high - found.mean == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    single = stats.estimate([0.30], bootstrap=(0.27, 0.33))
    assert (single.low, single.high, single.source) == (0.27, 0.33, "bootstrap")
    assert stats.estimate([0.30]).source == "none" and math.isnan(stats.estimate([]).mean)


def results_table(a: list[float], b: list[float], seeds_b: list[int] | None = None) -> pd.DataFrame:
    rows = [{"config_id": "a", "seed": s, "state": "complete", "AP": v} for s, v in enumerate(a)]
    rows += [{"config_id": "b", "seed": s, "state": "complete", "AP": v} for s, v in zip(seeds_b or range(len(b)), b)]
    rows.append({"config_id": "a", "seed": 9, "state": "failed", "AP": math.nan})
    return pd.DataFrame(rows)


def test_a_side_better_by_construction_is_called_better_paired_by_seed():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, 4)  # large shared seed noise, cancelled by pairing
    b = 0.30 + seed_effect
    a = b + 0.01 + rng.normal(0, 0.001, 4)
    table = results_table(list(a), list(b))
    comparison = stats.compare_configs(table, "a", "b", "AP")
    assert comparison.paired and comparison.n == 4
    assert comparison.verdict == "better" and comparison.low > 0
    assert comparison.difference == pytest.approx(np.mean(a - b))
    assert stats.compare_configs(table, "b", "a", "AP").verdict == "worse"
    # unpaired (disjoint seeds) the same numbers drown in the seed noise
    unpaired = stats.compare_configs(results_table(list(a), list(b), seeds_b=[10, 11, 12, 13]), "a", "b", "AP")
    assert not unpaired.paired and unpaired.verdict == "within noise"


def test_identical_sides_are_within_noise():
    values = [0.31, 0.29, 0.33]
    comparison = stats.compare_configs(results_table(values, values), "a", "b", "AP")
    assert comparison.difference == 0 and comparison.verdict == "within noise"
    noisy = stats.compare_configs(results_table([0.31, 0.29, 0.33], [0.30, 0.32, 0.31]), "a", "b", "AP")
    assert noisy.verdict == "within noise"


def test_single_seed_sides_use_their_bootstrap_intervals():
    table = pd.DataFrame(
        [
            {"config_id": "a", "seed": 0, "state": "complete", "AP": 0.40, "AP_ci_low": 0.38, "AP_ci_high": 0.42},
            {"config_id": "b", "seed": 0, "state": "complete", "AP": 0.30, "AP_ci_low": 0.28, "AP_ci_high": 0.32},
            {"config_id": "c", "seed": 0, "state": "complete", "AP": 0.39, "AP_ci_low": 0.37, "AP_ci_high": 0.41},
            {"config_id": "d", "seed": 0, "state": "complete", "AP": 0.39},
        ]
    )
    assert stats.compare_configs(table, "a", "b", "AP").verdict == "better"
    assert stats.compare_configs(table, "c", "a", "AP").verdict == "within noise"
    assert stats.compare_configs(table, "d", "a", "AP").verdict == "no interval"
    # lower is better for a minimized metric
    assert stats.compare_configs(table, "a", "b", "AP", maximize=False).verdict == "worse"
    assert stats.compare_configs(table, "a", "b", "AP").text(100) == "+10.00 [+7.17, +12.83]"  # half-widths 2 and 2 add in quadrature


def test_candidates_indistinguishable_from_the_winner():
    table = pd.DataFrame(
        [{"config_id": c, "seed": s, "state": "complete", "AP": base + noise}
         for c, base in (("win", 0.40), ("close", 0.399), ("far", 0.30))
         for s, noise in enumerate((0.0, 0.01, -0.01))]
    )
    table.loc[(table["config_id"] == "close") & (table["seed"] == 1), "AP"] = 0.40
    everyone = stats.compare_to_winner(table, "win", "AP")
    assert list(everyone["config_id"]) == ["close", "far"]
    assert list(everyone["verdict"]) == ["within noise", "worse"]
    assert list(stats.indistinguishable_from_winner(table, "win", "AP")["config_id"]) == ["close"]


def test_trial_intervals_become_results_columns():
    from optuna.trial import TrialState, create_trial

    from scaling_lab.study.results import results_frame

    metrics = {"AP": 0.3, "AP50": 0.5, "AP75": 0.2, "APs": 0.1, "APm": 0.3, "APl": 0.4,
               "AP_ci_low": 0.27, "AP_ci_high": 0.33, "AP50_ci_low": 0.46, "AP50_ci_high": 0.54}
    trial = create_trial(state=TrialState.COMPLETE, value=0.3, user_attrs={"config_id": "c1", "seed": 0, "group": "g", "record": {"state": "complete", "metrics": metrics}})
    row = results_frame([trial], "detection").iloc[0]
    assert (row["AP_ci_low"], row["AP_ci_high"], row["AP50_ci_low"], row["AP50_ci_high"]) == (0.27, 0.33, 0.46, 0.54)
