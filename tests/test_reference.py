"""Equivalence with the reference implementations, live: timm's EfficientNet and effdet's
EfficientDet (the official TensorFlow models' PyTorch ports), with the same weights and inputs.

The reference models are effdet's/timm's own randomly initialised ``tf_`` models (no download),
re-drawn with variance-preserving weights and batch-norm statistics so that every output depends
on the input at the scale of the tolerance. Skipped only where timm/effdet are not installed (CI
installs them: ``scripts/setup``); see ``tests/reference.py`` for the torchvision workaround.
"""

from __future__ import annotations

import math

import pytest
import torch

from scaling_lab.models import build_model
from scaling_lab.models.weights import WeightsError, load_state, to_reference
from scaling_lab.presets import preset
from scaling_lab.train.anchors import anchors_for_spec, flatten_levels, match_anchors
from scaling_lab.train.losses import detection_loss
from scaling_lab.train.postprocess import postprocess
from tests import reference

pytestmark = pytest.mark.skipif(not reference.available(), reason="timm/effdet are not installed (scripts/setup installs them)")

TOLERANCE = 1e-4  # fp32, absolute, on outputs of magnitude ~1-30


@pytest.fixture(scope="module")
def libraries():
    return reference.import_reference()


def redraw(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """New random weights that keep activations O(1) through the whole network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            normal = torch.randn(tensor.shape, generator=generator)
            uniform = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + 1.5 * uniform)
            elif name.endswith("running_mean"):
                tensor.copy_(0.2 * normal)
            elif name.endswith("edge_weights"):
                tensor.copy_(0.2 + 1.3 * uniform)
            elif tensor.ndim >= 2:
                tensor.copy_(normal * math.sqrt(2.0 / tensor[0].numel()))
            elif name.endswith("weight"):
                tensor.copy_(0.5 + uniform)
            else:
                tensor.copy_(0.2 * normal)
    return model.eval()


def effdet_model(effdet, name: str, seed: int = 1, size: tuple[int, int] = (256, 256)):
    """effdet's model for (height, width) inputs (its feature sizes are fixed by its config)."""
    return redraw(effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=size), seed)


def max_differences(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[float]:
    assert [tuple(a.shape) for a in ours] == [tuple(b.shape) for b in theirs]
    return [(a - b).abs().max().item() for a, b in zip(ours, theirs)]


# --------------------------------------------------------------------------------------------
# Models


@pytest.mark.slow  # ~15 s per detector on 2 cores
@pytest.mark.parametrize("name, size", [("d0", (256, 256)), ("d1", (256, 256)), ("d0", (128, 384))])  # and a 3:1 rectangle
def test_detector_matches_effdet_at_every_level(libraries, name, size):
    _, effdet = libraries
    theirs = effdet_model(effdet, f"tf_efficientdet_{name}", size=size)
    ours = build_model(preset(f"efficientdet-{name}").replace(resolution=list(size))).eval()
    load_state(ours, theirs.state_dict())
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        our_classes, our_boxes = ours(images)
        their_classes, their_boxes = theirs(images)
    differences = max_differences(our_classes + our_boxes, their_classes + their_boxes)
    assert len(differences) == 10 and max(differences) < TOLERANCE, differences
    # The outputs carry the input: a tolerance far below how much they vary.
    assert min((level.std().item() for level in their_classes + their_boxes)) > 100 * TOLERANCE


@pytest.mark.slow  # ~10 s
def test_symmetric_padding_is_not_the_reference(libraries):
    """The comparison can fail: the same weights with symmetric padding miss at every level."""
    _, effdet = libraries
    theirs = effdet_model(effdet, "tf_efficientdet_d0")
    ours = build_model(preset("efficientdet-d0").replace(padding="symmetric")).eval()
    load_state(ours, theirs.state_dict())
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        differences = max_differences(sum(ours(images), []), sum(theirs(images), []))
    assert min(differences) > 100 * TOLERANCE, differences


@pytest.mark.slow  # b3: ~20 s on 2 cores
@pytest.mark.parametrize("name, resolution", [("b0", 224), ("b3", 128)])
def test_backbone_matches_timm(libraries, name, resolution):
    timm, _ = libraries
    theirs = redraw(timm.create_model(f"tf_efficientnet_{name}", pretrained=False), 2)
    images = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(images)
        for padding, fits in (("same", True), ("symmetric", False)):
            ours = build_model(preset(f"efficientnet-{name}").replace(padding=padding)).eval()
            load_state(ours, theirs.state_dict())
            difference = (ours(images) - expected).abs().max().item()
            assert (difference < TOLERANCE) == fits, (padding, difference)
    assert (expected[0] - expected[1]).abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["tf_efficientdet_d0", "tf_efficientnet_b3"])
def test_round_trip_through_the_reference_layout_is_exact(libraries, name):
    timm, effdet = libraries
    detector = "efficientdet" in name
    theirs = effdet_model(effdet, name) if detector else redraw(timm.create_model(name, pretrained=False), 3)
    spec = preset(name.replace("tf_", "").replace("_", "-"))
    ours = build_model(spec)
    load_state(ours, theirs.state_dict())
    exported = to_reference(ours)
    reference_state = theirs.state_dict()
    assert sorted(exported) == sorted(reference_state)  # every key, none left over
    assert all(torch.equal(exported[key], reference_state[key]) for key in reference_state)
    again = build_model(spec)
    load_state(again, exported)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_a_misfit_names_the_first_differing_tensor_and_both_shapes(libraries):
    _, effdet = libraries
    theirs = effdet.create_model("tf_efficientdet_d1", pretrained=False, pretrained_backbone=False)
    ours = build_model(preset("efficientdet-d0"))
    with pytest.raises(WeightsError) as error:
        load_state(ours, theirs.state_dict(), "d1.pth")
    message = str(error.value)
    assert "d1.pth" in message and "'extra_levels.first.project.0.weight'" in message and "'fpn.resample.3.conv.conv.weight'" in message
    assert "[88, 320, 1, 1]" in message and "[64, 320, 1, 1]" in message


def test_a_deeper_checkpoint_is_not_loaded_in_part(libraries):
    timm, _ = libraries
    deeper = timm.create_model("tf_efficientnet_b1", pretrained=False).state_dict()  # b0's shapes, more blocks
    with pytest.raises(WeightsError, match=r"does not have, the first 'blocks\.0\.1\.conv_dw\.weight' \(shape \[16, 1, 3, 3\]\)"):
        load_state(build_model(preset("efficientnet-b0")), deeper)


# --------------------------------------------------------------------------------------------
# Recipe: anchors, matching, loss, post-processing


def scene(anchors: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth [2, 6, 4] xyxy and labels [2, 6] (-1 padding): random boxes, some exactly on
    anchors (all-zero box targets: the reference's mask), two that claim the same anchor (the
    first listed, at the lower IoU, wins it), and one whose centre is an anchor's row by
    (y1 + y2) / 2 but not by y1 + height / 2 (a tiny non-zero target in the reference)."""
    corner = torch.rand(2, 6, 2, generator=generator) * 400
    size = 16 + torch.rand(2, 6, 2, generator=generator) * 200
    boxes = torch.cat((corner, corner + size), -1)
    boxes[0, :2] = anchors[[20000, 40000]]
    boxes[0, 2] = torch.tensor([68.0, 1.5514, 100.0, 6.4486])  # the anchors of row 0 are centred on y = 4
    crowded = anchors[45000]
    boxes[1, 0] = crowded + torch.tensor([1.0, 1.0, -1.0, -1.0]) * 0.03 * (crowded[2:] - crowded[:2]).repeat(2)
    boxes[1, 1] = crowded
    labels = torch.randint(0, 90, (2, 6), generator=generator)
    labels[1, :2] = torch.tensor([5, 6])
    labels[1, 4:] = -1
    return boxes, labels


@pytest.mark.slow  # ~15 s per size: effdet's per-image labeler and NMS over 5,000 candidates
@pytest.mark.parametrize("size", [(512, 512), (384, 640)])
def test_recipe_defaults_match_effdet(libraries, size):
    _, effdet = libraries
    from effdet.anchors import AnchorLabeler, Anchors
    from effdet.bench import _batch_detection, _post_process
    from effdet.loss import DetectionLoss

    config = effdet.get_efficientdet_config("tf_efficientdet_d0")
    config.image_size = size
    spec = preset("efficientdet-d0").replace(resolution=list(size))
    generator = torch.Generator().manual_seed(4)

    their_anchors = Anchors.from_config(config)
    anchors = anchors_for_spec(spec)
    assert torch.equal(anchors, their_anchors.boxes[:, [1, 0, 3, 2]])  # yxyx there, xyxy here: 0 px apart

    boxes, labels = scene(anchors, generator)
    maps = [(size[0] // 2**level, size[1] // 2**level) for level in range(3, 8)]
    class_logits = [torch.randn(2, 9 * 90, *shape, generator=generator) - 3 for shape in maps]
    box_deltas = [0.3 * torch.randn(2, 9 * 4, *shape, generator=generator) for shape in maps]

    labeler = AnchorLabeler(their_anchors, 90, match_threshold=0.5)
    valid = [labels[i] >= 0 for i in range(2)]
    class_targets, box_targets, positives = labeler.batch_label_anchors(
        [boxes[i][valid[i]][:, [1, 0, 3, 2]] for i in range(2)], [labels[i][valid[i]] + 1 for i in range(2)]
    )
    their_loss = DetectionLoss(config)(class_logits, box_deltas, class_targets, box_targets, positives)

    targets = match_anchors(anchors, boxes, labels)
    flat_classes, flat_boxes = flatten_levels(class_logits, box_deltas, 90)
    our_loss = detection_loss(flat_classes, flat_boxes, targets)
    their_classes = torch.cat([t.reshape(2, -1) for t in class_targets], 1)
    assert torch.equal(targets.classes, their_classes)
    assert targets.classes[1, 45000] == 5  # the crowded anchor: the first-listed box's, at the lower IoU
    their_boxes = torch.cat([t.reshape(2, -1, 4) for t in box_targets], 1)
    assert torch.equal(targets.boxes != 0, their_boxes != 0)  # the same coordinates reach the box loss
    assert torch.allclose(targets.boxes, their_boxes, atol=1e-6)
    assert not torch.equal(match_anchors(anchors, boxes, labels, negative_iou=0.4).classes, their_classes)  # it can fail
    assert (targets.boxes == 0).all(-1).logical_not().sum() < targets.positive.sum()  # some positives with a 0 target
    for ours, theirs in zip((our_loss.total, our_loss.classes, our_loss.boxes), their_loss):
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)

    # each image letterboxed into part of the input: detections are clipped to its own area
    areas = torch.tensor([[size[0], size[1] - 40.0], [size[0] - 100.0, size[1]]])  # (height, width)
    detections = postprocess(flat_classes, flat_boxes, anchors, image_sizes=areas)
    top_classes, top_boxes, indices, classes = _post_process(class_logits, box_deltas, 5, 90, config.max_detection_points)
    expected = _batch_detection(2, top_classes, top_boxes, their_anchors.boxes, indices, classes, torch.ones(2), areas.flip(-1))
    assert (expected[1][:, 3] > 0).any() and (expected[1][:, 3] == areas[1, 0]).any()  # some boxes reach the area's edge
    for image in range(2):
        ours = torch.cat((detections.boxes[image], detections.scores[image, :, None], detections.labels[image, :, None] + 1.0), 1)
        assert ours.shape == expected[image].shape == (100, 6)
        assert torch.allclose(ours, expected[image], atol=1e-4), (ours - expected[image]).abs().max()
