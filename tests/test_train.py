"""Anchors, matching, loss, NMS, COCO evaluation and the trial loop (``scaling_lab.train``)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scaling_lab.data import DetectionLoader, make_synthetic_coco, synthetic_dataset
from scaling_lab.errors import ScalingLabError
from scaling_lab.models import build_model
from scaling_lab.stats import percentile_interval
from scaling_lab.train import (
    anchors_for_spec,
    batched_nms,
    box_iou,
    coco_metrics,
    decode_boxes,
    detection_loss,
    encode_boxes,
    flatten_levels,
    focal_loss,
    generate_anchors,
    match_anchors,
    postprocess,
    run_trial,
)

# the module, not the function the package exports under its name
postprocess_module = importlib.import_module("scaling_lab.train.postprocess")
from scaling_lab.train import commands, trainer
from scaling_lab.train.anchors import IGNORED, NEGATIVE, AnchorTargets
from scaling_lab.train.evaluate import detection_results, topk_correct
from scaling_lab.trial import Budget, Task
from tests.helpers import TINY_BACKBONE, TINY_DETECTOR, TINY_SCENES, tiny_task

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


# --------------------------------------------------------------------------------------------
# Anchors and matching


# (384, 640): (48·80 + 24·40 + 12·20 + 6·10 + 3·5)·9 anchors, the feature maps follow both sides
@pytest.mark.parametrize("resolution, count", [(512, 49104), (640, 76725), (256, 12276), ((384, 640), 46035)])
def test_anchor_count_per_resolution(resolution, count):
    assert generate_anchors(resolution, 3, 7).shape == (count, 4)


def test_anchor_layout_follows_the_official_code():
    anchors = generate_anchors(512, 3, 7)
    # first location of P3 (stride 8, centre 4): scale 2^0, ratios 1, 2, 0.5, then scale 2^(1/3)
    assert anchors[0].tolist() == pytest.approx([-12, -12, 20, 20])
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert (width[1] / height[1]).item() == pytest.approx(2.0)
    assert (width[2] / height[2]).item() == pytest.approx(0.5)
    assert width[3].item() == pytest.approx(32 * 2 ** (1 / 3))
    # second location is one stride to the right; P4 starts after 64*64*9 anchors with stride 16
    assert anchors[9].tolist() == pytest.approx((anchors[0] + torch.tensor([8.0, 0, 8, 0])).tolist())
    assert anchors[64 * 64 * 9].tolist() == pytest.approx([-24, -24, 40, 40])


def test_head_outputs_flatten_to_one_row_per_anchor():
    model = build_model(TINY_DETECTOR).eval()
    with torch.no_grad():
        classes, boxes = flatten_levels(*model(torch.zeros(2, 3, 64, 64)), TINY_DETECTOR.num_classes)
    count = anchors_for_spec(TINY_DETECTOR).shape[0]
    assert classes.shape == (2, count, 6) and boxes.shape == (2, count, 4)


def test_encode_decode_round_trip():
    anchors = generate_anchors(128, 3, 5)
    boxes = torch.tensor([10.0, 20.0, 50.0, 90.0]).expand(anchors.shape[0], 4)
    deltas = encode_boxes(boxes, anchors)
    assert torch.allclose(decode_boxes(deltas, anchors), boxes, atol=1e-3)
    assert deltas[0].tolist() == pytest.approx([(55 - 4) / 32, (30 - 4) / 32, math.log(70 / 32), math.log(40 / 32)])


def test_matching_thresholds_and_force_match():
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210], [300, 300, 310, 310]])
    gt_boxes = torch.tensor(
        [[[0.0, 0, 10, 6], [100, 100, 110, 104.5], [200, 200, 210, 203], [0, 0, 0, 0]]]  # IoU 0.6, 0.45, 0.3, padding
    )
    gt_labels = torch.tensor([[2, 1, 0, -1]])
    forced = match_anchors(anchors, gt_boxes, gt_labels)
    assert forced.classes.tolist() == [[2, 1, 0, NEGATIVE]]  # every box claims its best anchor
    plain = match_anchors(anchors, gt_boxes, gt_labels, force_match=False)  # the official 0.5 / 0.5: no ignored band
    assert plain.classes.tolist() == [[2, NEGATIVE, NEGATIVE, NEGATIVE]]
    plain = match_anchors(anchors, gt_boxes, gt_labels, negative_iou=0.4, force_match=False)  # RetinaNet's band
    assert plain.classes.tolist() == [[2, IGNORED, NEGATIVE, NEGATIVE]]
    assert plain.boxes[0, 1:].abs().sum() == 0 and plain.boxes[0, 0].abs().sum() > 0


def test_the_first_listed_box_wins_an_anchor_that_several_boxes_claim():
    # effdet's ArgMaxMatcher: boxes 0 and 1 both have anchor 0 as their best (IoU 0.3 and 0.4,
    # neither reaching 0.5); the first listed takes it whatever the IoUs, and box 1 gets nothing.
    anchors = torch.tensor([[0.0, 0, 100, 100], [300, 300, 400, 400]])
    gt_boxes = torch.tensor([[[0.0, 0, 100, 30], [0, 0, 100, 40]]])
    targets = match_anchors(anchors, gt_boxes, torch.tensor([[1, 2]]))
    assert targets.classes.tolist() == [[1, NEGATIVE]]
    assert match_anchors(anchors, gt_boxes.flip(1), torch.tensor([[2, 1]])).classes.tolist() == [[2, NEGATIVE]]
    # the box target is the first box's: centre y 15 vs 50 over height 100
    assert targets.boxes[0, 0, 0].item() == pytest.approx(-0.35)


def reference_match(anchors, gt_boxes, gt_labels, positive_iou=0.5, negative_iou=0.5):
    """Loop version: per image, per anchor, then per ground truth for the forced matches."""
    result = []
    for boxes, labels in zip(gt_boxes, gt_labels):
        valid = [m for m in range(len(labels)) if labels[m] >= 0]
        iou = box_iou(anchors, boxes)
        classes = []
        for n in range(len(anchors)):
            ious = [iou[n, m].item() for m in valid]
            best = max(ious, default=0.0)
            if best >= positive_iou:
                classes.append(int(labels[valid[ious.index(best)]]))
            else:
                classes.append(NEGATIVE if best < negative_iou else IGNORED)
        claims = {}  # anchor -> the first-listed ground truth whose best anchor it is
        for m in valid:
            n = int(iou[:, m].argmax())
            if iou[n, m] > 0 and n not in claims:
                claims[n] = m
        for n, m in claims.items():
            classes[n] = int(labels[m])
        result.append(classes)
    return result


def test_vectorized_matching_equals_a_loop_reference():
    generator = torch.Generator().manual_seed(3)
    anchors = generate_anchors(64, 3, 4, num_scales=2, aspect_ratios=(1.0, 2.0))
    corners = torch.rand(3, 5, 2, generator=generator) * 48
    gt_boxes = torch.cat([corners, corners + 4 + torch.rand(3, 5, 2, generator=generator) * 30], -1)
    gt_labels = torch.randint(0, 4, (3, 5), generator=generator)
    gt_labels[1, 3:] = -1
    gt_labels[2] = -1  # an image without objects
    assert match_anchors(anchors, gt_boxes, gt_labels).classes.tolist() == reference_match(anchors, gt_boxes, gt_labels)
    with_band = match_anchors(anchors, gt_boxes, gt_labels, negative_iou=0.4).classes
    assert with_band.tolist() == reference_match(anchors, gt_boxes, gt_labels, negative_iou=0.4)
    assert (with_band == IGNORED).any()


# --------------------------------------------------------------------------------------------
# Loss


def test_focal_loss_hand_values():
    logits = torch.tensor([0.0, 0.0, 2.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    p = 1 / (1 + math.exp(-2.0))
    expected = [
        0.25 * 0.5**1.5 * math.log(2),
        0.75 * 0.5**1.5 * math.log(2),
        0.75 * p**1.5 * -math.log(1 - p),
    ]
    assert focal_loss(logits, targets).tolist() == pytest.approx(expected, rel=1e-5)


def test_detection_loss_normalizes_by_positives_and_skips_ignored():
    logits = torch.zeros(1, 3, 2)
    deltas = torch.zeros(1, 3, 4)
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 4.5], [50, 50, 60, 60]])  # IoU 1, 0.45, 0 with the box
    targets = match_anchors(anchors, torch.tensor([[[0.0, 0, 10, 10]]]), torch.tensor([[1]]), negative_iou=0.4)
    assert targets.classes.tolist() == [[1, IGNORED, NEGATIVE]]
    loss = detection_loss(logits, deltas, targets)
    positive_terms = 0.25 * 0.5**1.5 * math.log(2) + 0.75 * 0.5**1.5 * math.log(2)
    negative_terms = 2 * 0.75 * 0.5**1.5 * math.log(2)
    assert loss.classes.item() == pytest.approx((positive_terms + negative_terms) / 2, rel=1e-5)
    assert loss.boxes.item() == 0 and loss.total.item() == pytest.approx(loss.classes.item())


# --------------------------------------------------------------------------------------------
# NMS and post-processing


def test_nms_hand_case():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 12, 12]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([[0, 0, 1, 0, 0]])
    # box 1 overlaps box 0 (IoU 0.68): suppressed; box 2 is another class; box 4 overlaps box 0
    # by 0.47 (kept, since its suppressor box 1 is gone)
    assert batched_nms(boxes, scores, labels).tolist() == [[True, False, True, True, True]]


def reference_nms(boxes, scores, labels, threshold):
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i].item()):
        if all(labels[i] != labels[j] or box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= threshold for j in keep):
            keep.append(i)
    return [i in keep for i in range(len(scores))]


def test_batched_nms_equals_brute_force():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(4, 60, 2, generator=generator) * 40
    boxes = torch.cat([corners, corners + 5 + torch.rand(4, 60, 2, generator=generator) * 20], -1)
    scores = torch.rand(4, 60, generator=generator)
    labels = torch.randint(0, 3, (4, 60), generator=generator)
    keep = batched_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == [reference_nms(b, s, l, 0.5) for b, s, l in zip(boxes, scores, labels)]


@pytest.mark.parametrize("block", [5, postprocess_module.NMS_BLOCK])
def test_batched_nms_equals_brute_force_across_blocks_of_crowded_boxes(block, monkeypatch):
    """Candidates piled on a few spots, settled in blocks: suppression chains run within and
    across blocks (an untrained detector's output), images keep different numbers of boxes,
    and the result is still greedy NMS."""
    monkeypatch.setattr(postprocess_module, "NMS_BLOCK", block)
    generator = torch.Generator().manual_seed(2)
    corners = torch.rand(3, 300, 2, generator=generator) * torch.tensor([[[8.0]], [[30.0]], [[60.0]]])
    boxes = torch.cat([corners, corners + 10 + torch.rand(3, 300, 2, generator=generator) * 30], -1)
    scores = torch.rand(3, 300, generator=generator)
    labels = torch.randint(0, 2, (3, 300), generator=generator)
    keep = batched_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == [reference_nms(b, s, l, 0.5) for b, s, l in zip(boxes, scores, labels)]
    assert batched_nms(boxes[:0], scores[:0], labels[:0], 0.5).shape == (0, 300)  # an empty batch


def test_nms_that_stops_at_max_kept_keeps_the_same_best_survivors():
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(3, 700, 2, generator=generator) * 40
    boxes = torch.cat([corners, corners + 5 + torch.rand(3, 700, 2, generator=generator) * 20], -1)
    scores = torch.rand(3, 700, generator=generator)
    labels = torch.randint(0, 2, (3, 700), generator=generator)
    full, partial = batched_nms(boxes, scores, labels), batched_nms(boxes, scores, labels, max_kept=20)
    assert (partial & ~full).sum() == 0 and (partial.sum(1) >= 20).all() and (partial.sum(1) < full.sum(1)).all()
    best = lambda keep: torch.where(keep, scores, -1.0).topk(20, dim=1).indices.sort(dim=1).values
    assert torch.equal(best(full), best(partial))


def test_postprocess_caps_detections_and_maps_classes():
    anchors = generate_anchors(64, 3, 4)
    logits = torch.full((2, anchors.shape[0], 3), -20.0)
    logits[0, 5, 2] = 3.0
    detections = postprocess(logits, torch.zeros(2, anchors.shape[0], 4), anchors, max_detections=10, min_score=0.001)
    assert detections.boxes.shape == (2, 10, 4)
    assert detections.valid.sum(1).tolist() == [1, 0]
    assert detections.labels[0, 0].item() == 2 and torch.allclose(detections.boxes[0, 0], anchors[5])
    reference = postprocess(logits, torch.zeros(2, anchors.shape[0], 4), anchors, max_detections=10)  # no score floor
    assert reference.valid.sum(1).tolist() == [10, 10] and reference.labels[0, 0].item() == 2


def test_postprocess_clips_boxes_to_each_images_area_not_the_padded_input():
    # One 40x40 anchor; its box decoded twice as wide: [-20, 0, 60, 40]. Image 0 fills only
    # 30 rows x 50 columns of the input (letterboxed), image 1 all of a 64x64 one.
    anchors = torch.tensor([[0.0, 0, 40, 40]])
    deltas = torch.tensor([0.0, 0, 0, math.log(2)]).expand(2, 1, 4)
    detections = postprocess(torch.full((2, 1, 1), 5.0), deltas, anchors, image_sizes=torch.tensor([[30.0, 50.0], [64.0, 64.0]]))
    assert detections.boxes[0, 0].tolist() == pytest.approx([0, 0, 50, 30])
    assert detections.boxes[1, 0].tolist() == pytest.approx([0, 0, 60, 40])


def test_postprocess_suppresses_above_iou_0_5_by_default_as_the_reference_does():
    # one class; B overlaps A by IoU 0.55 (suppressed at the reference's 0.5, kept at 0.6, where
    # it would suppress C); C overlaps A by 0.45 and B by 0.82
    anchors = torch.tensor([[0.0, 0, 100, 100], [0, 0, 100, 55], [0, 0, 100, 45]])
    assert box_iou(anchors[:1], anchors[1:]).flatten().tolist() == pytest.approx([0.55, 0.45])
    logits = torch.tensor([[[5.0], [3.0], [1.0]]])
    detections = postprocess(logits, torch.zeros(1, 3, 4), anchors)
    kept = detections.boxes[0][detections.valid[0]]
    assert torch.allclose(kept, anchors[[0, 2]])


def test_postprocess_considers_the_references_5000_best_candidates():
    # 1,200 copies of one box outscore 10 separate boxes: NMS keeps one copy, and the separate
    # boxes (candidates 1,201 to 1,210) survive only when more than 1,000 candidates go into NMS
    copies = torch.tensor([[0.0, 0, 50, 50]]).expand(1200, 4)
    separate = torch.tensor([[100.0 * i, 100, 100 * i + 50, 150] for i in range(10)])
    anchors = torch.cat([copies, separate])
    logits = torch.cat([torch.linspace(9, 5, 1200), torch.linspace(4, 3, 10)]).reshape(1, -1, 1)
    detections = postprocess(logits, torch.zeros(1, anchors.shape[0], 4), anchors)
    assert int(detections.valid.sum()) == 11


def test_bootstrap_interval_is_the_central_95_percent_of_the_replicates():
    assert percentile_interval(np.arange(1001) / 1000) == pytest.approx((0.025, 0.975))


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    assert [c.item() for c in topk_correct(logits, torch.tensor([1, 2]), (1, 5))] == [1, 2]


# --------------------------------------------------------------------------------------------
# COCO evaluation


def ground_truth_detections(dataset, resolution):
    """Every val image's ground truth turned into head outputs (one-hot logits, exact deltas),
    decoded, suppressed and written as COCO results."""
    anchors = generate_anchors(resolution, 3, 5)
    records, image_ids = [], []
    for batch in DetectionLoader(dataset, resolution, batch_size=4, train=False):
        targets = match_anchors(anchors, batch.boxes, batch.labels)
        logits = torch.full((*targets.classes.shape, dataset.num_classes), -20.0)
        logits[targets.positive] = logits[targets.positive].scatter(1, targets.classes[targets.positive].unsqueeze(1), 20.0)
        detections = postprocess(logits, targets.boxes, anchors, image_sizes=batch.sizes)
        records += detection_results(dataset, detections, batch.image_ids, batch.scales)
        image_ids += batch.image_ids
    return records, image_ids


@pytest.mark.parametrize("resolution", [128, (128, 256)])  # square, and letterboxed into a wide rectangle
def test_ground_truth_through_encode_decode_nms_scores_ap_1(resolution):
    dataset = synthetic_dataset("val", val_images=12, image_size=160, min_object_size=10.0, max_object_size=120.0, max_occlusion=0.2)
    records, image_ids = ground_truth_detections(dataset, resolution)
    metrics = coco_metrics(dataset.coco, records, image_ids)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_zero_detections_score_ap_0():
    dataset = synthetic_dataset("val", **TINY_SCENES)
    metrics = coco_metrics(dataset.coco, [], dataset.image_ids)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0


# --------------------------------------------------------------------------------------------
# Trials


def test_detection_trial_returns_metrics_curve_and_measurements(monkeypatch):
    from scaling_lab.latency import Latency, Timing

    timed = []  # a standalone trial times its spec alone after training (the figures are measure's business)
    timing = Timing(3.0, 2.9, 3.1, 2.8, 3.5, 10, 1, True)
    monkeypatch.setattr(trainer, "measure_latency", lambda spec, batch, device, dtype: timed.append(batch) or Latency("cpu:test", dtype, batch, timing, timing))
    reports = []
    result = run_trial(TINY_DETECTOR, tiny_task(latency=True), Budget(epochs=2), report=lambda epoch, metrics: reports.append(epoch))
    assert set(result.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP_ci_low", "AP_ci_high", "AP50_ci_low", "AP50_ci_high"}
    assert all(0 <= value <= 1 for value in result.metrics.values() if not math.isnan(value))
    assert result.metrics["AP_ci_low"] <= result.metrics["AP"] <= result.metrics["AP_ci_high"]
    # the final validation's replicates are kept (out of the metrics and the curve) to pair trials on the same images
    assert len(result.bootstrap["AP"]) == len(result.bootstrap["AP50"]) == 200 and result.bootstrap["resampling"]
    assert percentile_interval(result.bootstrap["AP"]) == pytest.approx((result.metrics["AP_ci_low"], result.metrics["AP_ci_high"]))
    assert all("bootstrap" not in entry for entry in result.curve)
    assert [entry["epoch"] for entry in result.curve] == reports == [1, 2]
    assert result.params > 0 and result.flops > 0 and result.latency_ms == 3.0 and timed == [1] and result.notes == []
    assert json.loads(json.dumps(result.to_dict()))["spec_hash"] == TINY_DETECTOR.spec_hash


class Interrupted(Exception):
    pass


def test_checkpoint_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    task, budget = tiny_task(ema=0.99), Budget(epochs=3)
    straight = run_trial(TINY_DETECTOR, task, budget)

    def interrupt_after_first(epoch, metrics):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(TINY_DETECTOR, task, budget, report=interrupt_after_first, checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / trainer.CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1 and len(saved["curve"]) == 1

    resumed = run_trial(TINY_DETECTOR, task, budget, checkpoint_dir=tmp_path)
    assert [entry["epoch"] for entry in resumed.curve] == [1, 2, 3]
    assert resumed.notes == [f"resumed from {tmp_path / trainer.CHECKPOINT_NAME} after epoch 1"]
    for mine, theirs in zip(resumed.curve, straight.curve):
        assert mine == pytest.approx(theirs, nan_ok=True)
    assert resumed.bootstrap["resampling"] == straight.bootstrap["resampling"]
    assert resumed.bootstrap["AP"] == pytest.approx(straight.bootstrap["AP"], nan_ok=True)

    with pytest.raises(ScalingLabError, match="belongs to another trial"):
        run_trial(TINY_DETECTOR, task, budget, seed=1, checkpoint_dir=tmp_path)


def test_unreadable_checkpoint_is_moved_aside_and_the_trial_starts_afresh(tmp_path):
    """Checkpoints are written atomically, so one cut short is the machine's doing (a disk
    error, a copy): the trial is not failed for good but trains afresh, keeping the damaged file."""
    task, budget = tiny_task(), Budget(epochs=1)
    straight = run_trial(TINY_DETECTOR, task, budget)
    torch.save({"weights": torch.zeros(10_000)}, tmp_path / trainer.CHECKPOINT_NAME)
    truncated = (tmp_path / trainer.CHECKPOINT_NAME).read_bytes()[:5000]
    (tmp_path / trainer.CHECKPOINT_NAME).write_bytes(truncated)
    result = run_trial(TINY_DETECTOR, task, budget, checkpoint_dir=tmp_path)
    assert result.curve[0] == pytest.approx(straight.curve[0], nan_ok=True)
    assert len(result.notes) == 1 and f"checkpoint {tmp_path / trainer.CHECKPOINT_NAME} could not be read" in result.notes[0]
    assert "moved aside as checkpoint.pt.damaged, the trial started afresh" in result.notes[0]
    assert (tmp_path / "checkpoint.pt.damaged").read_bytes() == truncated
    assert torch.load(tmp_path / trainer.CHECKPOINT_NAME, weights_only=True)["epoch"] == 1


def test_num_classes_mismatch_adapts_or_fails():
    other = TINY_DETECTOR.replace(num_classes=90)
    result = run_trial(other, tiny_task(), Budget(epochs=1))
    assert result.spec_hash == other.spec_hash
    assert result.notes and "num_classes 90 replaced by the dataset's 6" in result.notes[0]
    with pytest.raises(ScalingLabError, match="num_classes 90 does not match the 6 classes"):
        run_trial(other, tiny_task(adapt_num_classes=False), Budget(epochs=1))


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ScalingLabError, match="does not exist"):
        run_trial(TINY_DETECTOR, Task(data=str(tmp_path / "missing"), latency=False), Budget(epochs=1))
    with pytest.raises(ScalingLabError, match="trains a detector spec"):
        run_trial(TINY_BACKBONE, tiny_task(), Budget(epochs=1))
    with pytest.raises(ScalingLabError, match="not a torch device"):
        run_trial(TINY_DETECTOR, tiny_task(), Budget(epochs=1), device="gpu0")
    with pytest.raises(ScalingLabError, match="ema"):
        Task(ema=1.5)
    with pytest.raises(ScalingLabError, match="max_train_images"):
        Budget(max_train_images=0)


def test_non_finite_loss_stops_the_trial(monkeypatch):
    real_loss = trainer.detection_loss

    def exploding_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        loss.total = loss.total * math.inf
        return loss

    monkeypatch.setattr(trainer, "detection_loss", exploding_loss)
    with pytest.raises(trainer.TrainingDiverged, match="diverged"):
        run_trial(TINY_DETECTOR, tiny_task(), Budget(epochs=1))
    assert issubclass(trainer.TrainingDiverged, ScalingLabError)


def test_exploding_loss_ends_the_trial_as_diverged_with_epoch_and_loss():
    # --lr 1e6 used to train to a loss of ~1e16 and report success.
    with pytest.raises(trainer.TrainingDiverged, match=r"the loss reached \S+, over 1000 times its first step's \S+ in epoch 1"):
        run_trial(TINY_DETECTOR, tiny_task(lr=1e6), Budget(epochs=2))
    assert trainer.divergence(3.0, 2.5) is None and trainer.divergence(2.4e3, 2.5) is None
    assert trainer.divergence(2.6e3, 2.5).startswith("the loss reached 2600")
    assert trainer.divergence(math.nan, 2.5) == "the loss became nan"


def test_classification_trial_reports_top1_top5():
    knobs = dict(train_per_class=4, val_per_class=2, image_size=32)
    task = Task(kind="classification", synthetic=tuple(sorted(knobs.items())), batch_size=8, lr=0.05, latency=False)
    result = run_trial(TINY_BACKBONE.replace(resolution=32, num_classes=6), task, Budget(epochs=2, max_val_images=6))
    assert set(result.metrics) == {"top1", "top5"}
    assert 0 <= result.metrics["top1"] <= result.metrics["top5"] <= 1
    assert len(result.curve) == 2


def test_train_command_prints_the_trial_as_json(tmp_path, capsys):
    root = make_synthetic_coco(tmp_path / "scenes", **TINY_SCENES)
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(TINY_DETECTOR.to_json())
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(
        ["train", str(spec_file), "--set", "channels=8", "--data", str(root), "--epochs", "1", "--batch-size", "4", "--no-latency", "--json", "--logdir", str(tmp_path / "curves")]
    )
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["spec_hash"] == TINY_DETECTOR.replace(channels=8).spec_hash and "AP" in printed["metrics"]
    # the curves in TensorBoard's format, as a study's trials write them (tests/test_tracking.py)
    events = EventAccumulator(str(tmp_path / "curves"))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("val/AP")] == [(2, pytest.approx(printed["metrics"]["AP"], rel=1e-6))]
    assert "_hparams_/session_start_info" in events.Tags()["tensors"]


@pytest.mark.slow
def test_small_detector_overfits_sixteen_images():
    """Train and validate on the same 16 scenes: a working detector learns them (AP50 >= 0.9)."""
    spec = TINY_DETECTOR.replace(resolution=128, channels=32)
    root = make_synthetic_coco(
        train_images=16, val_images=1, image_size=128, min_object_size=32.0, max_object_size=102.4, max_objects=3, clutter=0.3
    )
    task = Task(
        data=str(root),
        val_images=str(root / "train" / "images"),
        val_annotations=str(root / "train" / "annotations.json"),
        batch_size=8,
        optimizer="adamw",
        lr=0.01,
        warmup_epochs=2,
        augment=False,
        latency=False,
    )
    result = run_trial(spec, task, Budget(epochs=60, eval_every=60))
    assert result.metrics["AP50"] >= 0.9, result.curve


# --------------------------------------------------------------------------------------------
# The official constants, pinned by hand-computed values (each fails if its constant changes)


def test_an_anchor_at_iou_0_55_is_positive():
    # The box [0, 0, 100, 100] claims the identical anchor 0 (IoU 1) for itself; anchor 1 covers
    # its lower 55 %: IoU 5500 / 10000 = 0.55, positive by the official 0.5 threshold alone.
    anchors = torch.tensor([[0.0, 0, 100, 100], [0, 0, 100, 55]])
    targets = match_anchors(anchors, torch.tensor([[[0.0, 0, 100, 100]]]), torch.tensor([[3]]))
    assert targets.classes.tolist() == [[3, 3]]
    # (ty, tx, th, tw) of the box on anchor 1: centre y 50 vs 27.5 over height 55, log(100 / 55).
    assert targets.boxes[0, 1].tolist() == pytest.approx([22.5 / 55, 0.0, math.log(100 / 55), 0.0], rel=1e-5)


def test_box_loss_is_huber_with_delta_0_1_weighted_50():
    # One positive anchor (class 0 of 1, logit 0) whose box deltas are predicted as 0 against
    # targets (0.2, -0.3, 0.05, 0.4). Huber with delta 0.1: 0.1·(|x| - 0.05) outside, 0.5·x² inside:
    # 0.015 + 0.025 + 0.00125 + 0.035 = 0.07625; over 4 · (1 positive + 1) = 0.00953125.
    # Focal term of the positive: 0.25 · 0.5^1.5 · ln 2 = 0.0612661, over (1 + 1) = 0.0306331.
    targets = AnchorTargets(classes=torch.tensor([[0]]), boxes=torch.tensor([[[0.2, -0.3, 0.05, 0.4]]]))
    loss = detection_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 4), targets)
    assert loss.boxes.item() == pytest.approx(0.00953125, rel=1e-5)
    class_loss = 0.25 * 0.5**1.5 * math.log(2) / 2
    assert loss.classes.item() == pytest.approx(class_loss, rel=1e-5)
    assert loss.total.item() == pytest.approx(class_loss + 50 * 0.00953125, rel=1e-5)  # 0.5071956


def test_a_box_centred_on_its_anchor_by_min_plus_half_size_keeps_its_centre_term():
    # The anchor [-12, -12, 20, 20] is centred on y = 4. The box's y1, y2 (1.5514, 6.4486 in
    # float32) average to exactly 4, but y1 + (y2 - y1) / 2, effdet's box coder's centre, is
    # 4 - 2.4e-7: its ty target is not 0, so the box loss keeps that coordinate, as effdet's does.
    anchor = torch.tensor([[-12.0, -12, 20, 20]])
    box = torch.tensor([[[-2.0, 1.5514, 10.0, 6.4486]]])  # x centred exactly either way
    assert ((box[..., 1] + box[..., 3]) / 2).item() == 4.0
    ty, tx, _, _ = encode_boxes(box, anchor)[0, 0].tolist()
    assert ty == pytest.approx(-2.384185791015625e-07 / 32, rel=1e-3) and tx == 0.0
    targets = AnchorTargets(classes=torch.tensor([[0]]), boxes=encode_boxes(box, anchor))
    loss = detection_loss(torch.zeros(1, 1, 1), torch.full((1, 1, 4), 0.2) + targets.boxes, targets)
    # three coordinates off by 0.2 (Huber 0.1·(0.2 - 0.05) = 0.015 each), tx's 0 target skipped
    assert loss.boxes.item() == pytest.approx(3 * 0.015 / (4 * 2), rel=1e-4)


# --------------------------------------------------------------------------------------------
# The learning rate


def test_default_lr_scales_linearly_from_the_official_0_08_at_batch_64():
    assert Task(batch_size=64).peak_lr == pytest.approx(0.08)
    assert Task(batch_size=16).peak_lr == pytest.approx(0.02)
    assert Task(batch_size=128).peak_lr == pytest.approx(0.16)
    assert Task.from_dict({"batch_size": 32}, "study.yaml: task").peak_lr == pytest.approx(0.04)
    # It follows the batch size however the task was made; an explicit lr is kept as given.
    assert dataclasses.replace(Task(batch_size=64), batch_size=8).peak_lr == pytest.approx(0.01)
    assert Task(batch_size=16, lr=0.05).peak_lr == 0.05
    optimizer = trainer.make_optimizer(torch.nn.Linear(2, 2), Task(batch_size=32))
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.04, 0.04])
    with pytest.raises(ScalingLabError, match="task lr: optimizer adamw has no official base rate"):
        Task(optimizer="adamw")
    assert Task(optimizer="adamw", lr=1e-3).peak_lr == 1e-3


def test_anchor_pairs_scale_the_sides_and_plain_ratios_keep_the_area():
    pairs = generate_anchors(128, 3, 3, num_scales=1, aspect_ratios=((1.0, 1.0), (1.4, 0.7)))
    ratios = generate_anchors(128, 3, 3, num_scales=1, aspect_ratios=(2.0,))
    width, height = pairs[1, 2] - pairs[1, 0], pairs[1, 3] - pairs[1, 1]
    assert (width.item(), height.item()) == pytest.approx((32 * 1.4, 32 * 0.7))  # anchor_scale 4 x stride 8
    width, height = ratios[0, 2] - ratios[0, 0], ratios[0, 3] - ratios[0, 1]
    assert (width.item(), height.item()) == pytest.approx((32 * math.sqrt(2), 32 / math.sqrt(2)))
    assert torch.allclose((pairs[0, :2] + pairs[0, 2:]) / 2, torch.tensor([4.0, 4.0]))


def test_box_loss_skips_coordinates_whose_target_is_zero():
    anchors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    targets = match_anchors(anchors, torch.tensor([[[0.0, 0, 10, 12]]]), torch.tensor([[0]]))  # same centre x and width
    assert targets.boxes[0, 0, 1] == 0 and targets.boxes[0, 0, 3] == 0 and targets.boxes[0, 0, 0] != 0
    deltas = torch.ones(1, 2, 4)
    loss = detection_loss(torch.zeros(1, 2, 1), deltas, targets)
    counted = huber = 0.0
    for j in (0, 2):  # only ty and th have non-zero targets
        error = abs(1.0 - targets.boxes[0, 0, j].item())
        huber += 0.5 * error**2 if error <= 0.1 else 0.1 * (error - 0.05)
        counted += 1
    assert loss.boxes.item() == pytest.approx(huber / (4 * 2), rel=1e-5) and counted == 2
