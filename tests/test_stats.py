"""Uncertainty: the bootstrap over validation images and the seed/paired comparisons (``scaling_lab.stats``)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import stats as distributions

from scaling_lab import decisions, stats
from scaling_lab.train import coco_metrics
from scaling_lab.train.bootstrap import BOOTSTRAP_SEED, bootstrap_ap, reaccumulate

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


def test_two_trials_on_the_same_images_draw_the_same_resamples():
    # Each replicate of each trial is COCOeval on the same duplicated image set, so replicate by
    # replicate the differences are a paired bootstrap over images.
    coco, results = scenes(20, seed=8)
    worse = [r for r in results if r["image_id"] > 5]  # the second model misses everything on five images
    first, second = (bootstrap_ap(evaluated(coco, [dict(r) for r in found]), replicates=3) for found in (results, worse))
    assert first["bootstrap"]["resampling"] == second["bootstrap"]["resampling"]
    weights = np.random.default_rng(BOOTSTRAP_SEED).multinomial(20, np.full(20, 1 / 20), size=3)
    for row, row_weights in enumerate(weights):
        expected = duplicated(coco, results, row_weights).stats[0] - duplicated(coco, worse, row_weights).stats[0]
        assert first["bootstrap"]["AP"][row] - second["bootstrap"]["AP"][row] == pytest.approx(expected, abs=1e-9)
    fewer_images = evaluated(coco, [dict(r) for r in results])
    fewer_images.params.imgIds = list(range(1, 20))
    assert bootstrap_ap(fewer_images, replicates=3)["bootstrap"]["resampling"] != first["bootstrap"]["resampling"]


def test_identical_detections_differ_by_zero_in_every_replicate():
    coco, results = scenes(30, seed=9)
    first, second = (bootstrap_ap(evaluated(coco, [dict(r) for r in results])) for _ in range(2))
    assert first["AP_ci_high"] - first["AP_ci_low"] > 0.05  # each trial's own interval is wide
    assert np.array_equal(first["bootstrap"]["AP"], second["bootstrap"]["AP"])


# --------------------------------------------------------------------------------------------
# Seeds and comparisons


def test_t_quantiles_match_the_tables():
    assert [round(stats.t_quantile(df), 3) for df in (1, 2, 4, 9, 29)] == [12.706, 4.303, 2.776, 2.262, 2.045]
    assert stats.t_quantile(math.inf) == pytest.approx(1.96, abs=1e-3)


def test_estimate_over_seeds_and_for_one_seed():
    found = stats.estimate([0.30, 0.32, 0.34])
    assert (found.mean, found.sd, found.n, found.source) == (pytest.approx(0.32), pytest.approx(0.02), 3, "seeds")
    assert found.high - found.mean == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    single = stats.estimate([0.30], bootstrap=(0.27, 0.33))
    assert (single.low, single.high, single.source) == (0.27, 0.33, "bootstrap (images only)")
    pooled = stats.estimate([0.30], bootstrap=(0.27, 0.33), pooled=stats.SeedNoise(0.028, 4, 2))
    assert pooled.source == "pooled seed noise" and pooled.high - 0.30 == pytest.approx(2.776 * 0.028, rel=1e-3)
    assert stats.estimate([0.30]).source == "none" and math.isnan(stats.estimate([]).mean)


def test_ap_intervals_stay_inside_0_and_100():
    # a depth-only point near 0 AP: its t interval would reach below 0 (-0.5 AP in the proxy report)
    found = stats.estimate([0.004, 0.001, 0.009], bounds=stats.bounds_of("AP"))
    assert found.low == 0.0 and 0 < found.high < 0.03
    assert stats.estimate([0.999, 0.99, 0.995], bounds=stats.bounds_of("AP")).high == 1.0
    table = pd.DataFrame([{"config_id": "depth", "seed": s, "state": "complete", "AP": v} for s, v in enumerate((0.004, 0.001, 0.009))])
    assert stats.config_estimates(table, "AP")["low"].iloc[0] == 0.0


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
    assert comparison.paired and comparison.n == 4 and comparison.seeds_used == (0, 1, 2, 3)
    assert comparison.verdict == "better" and comparison.low > 0
    assert comparison.difference == pytest.approx(np.mean(a - b))
    assert stats.compare_configs(table, "b", "a", "AP").verdict == "worse"
    # unpaired (disjoint seeds) the same numbers drown in the seed noise
    unpaired = stats.compare_configs(results_table(list(a), list(b), seeds_b=[10, 11, 12, 13]), "a", "b", "AP")
    assert not unpaired.paired and unpaired.verdict == "unresolved"


def test_equivalent_only_when_the_whole_interval_is_inside_the_margin():
    rng = np.random.default_rng(1)
    b = 0.30 + rng.normal(0, 0.05, 6)
    a = b + rng.normal(0, 0.001, 6)  # paired differences of about 0.001
    table = results_table(list(a), list(b))
    assert stats.compare_configs(table, "a", "b", "AP", margin=0.01).verdict == "equivalent"
    assert stats.compare_configs(table, "a", "b", "AP", margin=0.0005).verdict == "unresolved"
    assert stats.compare_configs(table, "a", "b", "AP").verdict == "unresolved"  # no margin, no equivalence
    noisy = stats.compare_configs(results_table([0.31, 0.29, 0.33], [0.30, 0.32, 0.31]), "a", "b", "AP", margin=0.01)
    assert noisy.verdict == "unresolved" and noisy.high > 0.01


def test_one_seed_sides_are_unresolved_without_pooled_seed_noise():
    # The same configuration on seeds 0 and 1, entered as two one-seed configurations: its image
    # bootstrap (SE ~0.6 AP) leaves out the seed noise (sd ~2.8 AP) and once called it "better".
    table = pd.DataFrame(
        [
            {"config_id": "seed0", "seed": 0, "state": "complete", "AP": 0.146, "AP_ci_low": 0.134, "AP_ci_high": 0.158},
            {"config_id": "seed1", "seed": 1, "state": "complete", "AP": 0.100, "AP_ci_low": 0.088, "AP_ci_high": 0.112},
        ]
    )
    alone = stats.compare_configs(table, "seed0", "seed1", "AP")
    assert alone.verdict == "unresolved" and math.isnan(alone.low)
    assert "no configuration of the study has two" in alone.note
    # with seed noise pooled from configurations that have two or more seeds, it is used and named
    others = pd.DataFrame([{"config_id": c, "seed": s, "state": "complete", "AP": v} for c, values in (("x", (0.12, 0.15, 0.09)), ("y", (0.20, 0.17, 0.22))) for s, v in enumerate(values)])
    everything = pd.concat([table, others])
    pooled = stats.pooled_seed_noise(everything, "AP")
    assert pooled.df == 4 and pooled.sd == pytest.approx(math.sqrt((np.var((0.12, 0.15, 0.09), ddof=1) + np.var((0.20, 0.17, 0.22), ddof=1)) / 2))
    found = stats.compare_configs(everything, "seed0", "seed1", "AP", pooled=pooled)
    assert found.verdict == "unresolved" and found.low < 0 < found.high and "pooled seed sd" in found.method
    assert found.high - found.difference == pytest.approx(stats.t_quantile(4) * pooled.sd * math.sqrt(2))


def one_seed_trials(per_image: dict[str, np.ndarray], resampling: dict[str, str] | None = None, replicates: int = 400) -> pd.DataFrame:
    """One-seed trials whose metric is the mean of a hand-made per-image score, with bootstrap
    replicates resampling the images with one shared draw (as trials on the same images do)."""
    images = len(next(iter(per_image.values())))
    weights = np.random.default_rng(0).multinomial(images, np.full(images, 1 / images), size=replicates) / images
    rows = []
    for config_id, scores in per_image.items():
        kept = {"resampling": (resampling or {}).get(config_id, "same images"), "AP": (weights @ scores).tolist()}
        rows.append({"config_id": config_id, "seed": 0, "state": "complete", "AP": float(scores.mean()), "bootstrap": json.dumps(kept)})
    return pd.DataFrame(rows)


def test_two_one_seed_trials_on_the_same_images_get_a_paired_image_bootstrap():
    # Image difficulty varies a lot (sd 0.3 per image); model a scores 0.02 more on every image.
    difficulty = np.random.default_rng(5).uniform(0.0, 0.8, 50)
    table = one_seed_trials({"a": difficulty + 0.02, "b": difficulty})
    found = decisions.decide(table, [("a", "b")], "AP", decisions.DecisionRule())[("a", "b")]
    assert found.difference == pytest.approx(0.02)
    assert (found.low, found.high) == pytest.approx((0.02, 0.02))  # paired: the difficulty cancels in every replicate
    assert found.verdict == "unresolved"  # about two trained models, not their configurations
    assert "paired bootstrap over images" in found.method and "a better on these images" in found.note and "training noise" in found.note
    # each side's own interval is far wider than the difference: unpaired it would say nothing
    own = [stats.percentile_interval(json.loads(text)["AP"]) for text in table["bootstrap"]]
    assert own[0][1] - own[0][0] > 5 * 0.02
    # the model-level verdict follows the interval: a mixed per-image effect centred on 0 is no difference
    mixed = one_seed_trials({"a": difficulty + np.tile([0.05, -0.05], 25), "b": difficulty})
    found = stats.compare_configs(mixed, "a", "b", "AP")
    assert found.low < 0 < found.high and "a unresolved on these images" in found.note
    found = stats.compare_configs(mixed, "a", "b", "AP", margin=0.05)
    assert "a equivalent on these images" in found.note and found.verdict == "unresolved"


def test_trials_on_other_images_or_with_pooled_seed_noise_are_not_image_paired():
    difficulty = np.random.default_rng(5).uniform(0.0, 0.8, 50)
    elsewhere = one_seed_trials({"a": difficulty + 0.02, "b": difficulty}, resampling={"a": "these images", "b": "other images"})
    found = stats.compare_configs(elsewhere, "a", "b", "AP")
    assert found.method == "one seed" and math.isnan(found.low) and found.verdict == "unresolved"
    # seed noise pooled from configurations with two or more seeds measures training noise: it is used instead
    others = pd.DataFrame([{"config_id": c, "seed": s, "state": "complete", "AP": v} for c, values in (("x", (0.12, 0.15, 0.09)), ("y", (0.20, 0.17, 0.22))) for s, v in enumerate(values)])
    everything = pd.concat([one_seed_trials({"a": difficulty + 0.02, "b": difficulty}), others])
    found = decisions.decide(everything, [("a", "b")], "AP", decisions.DecisionRule())[("a", "b")]
    assert "pooled seed sd" in found.method and found.low < 0 < found.high


def test_seeds_only_one_side_has_are_shown_not_silently_dropped():
    a = pd.Series({0: 0.30, 1: 0.32, 2: 0.10})
    b = pd.Series({0: 0.29, 1: 0.30, 3: 0.50})
    found = stats.compare(a, b)
    assert found.paired and found.seeds_used == (0, 1) and found.difference == pytest.approx(0.015)
    assert found.seeds_text() == "paired on seeds 0, 1 (unused: a 2; b 3)"
    assert found.verdict == "unresolved"  # two pairs: t at one degree of freedom


def test_no_pairing_by_row_position_without_a_seed_column():
    table = results_table([0.30, 0.32, 0.34], [0.29, 0.31, 0.33]).drop(columns="seed")
    found = stats.compare_configs(table, "a", "b", "AP")
    assert not found.paired and found.verdict == "unresolved"  # Welch: 0.01 against an sd of 0.02


def test_a_paired_difference_with_zero_spread_is_no_verdict():
    found = stats.compare(pd.Series({0: 0.31, 1: 0.33}), pd.Series({0: 0.30, 1: 0.32}))
    assert found.paired and found.difference == pytest.approx(0.01)
    assert found.verdict == "unresolved" and "zero spread" in found.note


def test_seeds_needed_is_power_with_the_sd_uncertainty():
    # 80 % power, two-sided 5 %, a gap of one sd of the paired differences: n = 10 (noncentral t;
    # the textbook 9.94 rounded up), where a half-width rule would say t * sd / sqrt(n) <= gap: n = 7
    found = stats.seeds_for_power(sd=1.0, df=2, gap=1.0)
    assert found.seeds == 10
    critical = distributions.t.ppf(0.975, 9)
    assert distributions.nct.sf(critical, 9, math.sqrt(10)) + distributions.nct.cdf(-critical, 9, math.sqrt(10)) >= 0.8
    # the sd from 2 degrees of freedom: its 95 % interval is [0.52, 6.28] sd, so [5, 312] seeds
    assert (found.low, found.high) == (5, 312)
    assert found.text(100) == "10 seeds [5, 312] for 80% power at a gap of 100"
    assert stats.seeds_for_power(sd=float("nan"), df=0, gap=1.0) is None


def test_trial_intervals_become_results_columns():
    from optuna.trial import TrialState, create_trial

    from scaling_lab.study.results import results_frame

    metrics = {"AP": 0.3, "AP50": 0.5, "AP75": 0.2, "APs": 0.1, "APm": 0.3, "APl": 0.4,
               "AP_ci_low": 0.27, "AP_ci_high": 0.33, "AP50_ci_low": 0.46, "AP50_ci_high": 0.54}
    trial = create_trial(state=TrialState.COMPLETE, value=0.3, user_attrs={"config_id": "c1", "seed": 0, "group": "g", "record": {"state": "complete", "metrics": metrics}})
    row = results_frame([trial], "detection").iloc[0]
    assert (row["AP_ci_low"], row["AP_ci_high"], row["AP50_ci_low"], row["AP50_ci_high"]) == (0.27, 0.33, 0.46, 0.54)
