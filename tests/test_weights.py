"""Loading and saving weights (``scaling_lab.models.weights``), fine-tuning options, and the
``evaluate`` command. Equivalence with timm/effdet themselves: ``tests/test_reference.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scaling_lab.cli import main
from scaling_lab.models import build_model
from scaling_lab.models.weights import WeightsError, load_init, load_state, reference_keys, save_weights, to_reference
from scaling_lab.presets import preset
from scaling_lab.train import run_trial
from scaling_lab.train.finetune import parameter_groups
from scaling_lab.train.scoring import evaluate_spec
from scaling_lab.train.trainer import CHECKPOINT_NAME
from scaling_lab.trial import Budget, Task
from tests.helpers import TINY_BACKBONE, TINY_DETECTOR, TINY_SCENES, tiny_task

# A classifier with its own head (5 classes at 64 px) whose backbone fills the tiny detector's,
# and six validation scenes.
CLASSIFIER = TINY_BACKBONE.replace(resolution=64, num_classes=5)
DETECTOR = TINY_DETECTOR.replace(backbone=CLASSIFIER.to_dict())
SCENES = {**TINY_SCENES, "val_images": 6}


pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def scenes_task(**changes) -> Task:
    return tiny_task(SCENES, **changes)


def randomized(spec, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1)
    return model


def same_tensors(a: dict, b: dict, skip: str = "\0") -> bool:
    return all(torch.equal(a[key], b[key]) for key in a if not key.startswith(skip))


# --------------------------------------------------------------------------------------------
# Loading and saving


@pytest.mark.parametrize("spec", [DETECTOR, DETECTOR.replace(feature_network="panet", separable=False), CLASSIFIER])
def test_weights_round_trip_through_a_file_and_the_reference_layout(tmp_path, spec):
    model = randomized(spec)
    loaded = build_model(spec)
    load_init(loaded, str(save_weights(model, tmp_path / "w.pt", spec)))
    assert same_tensors(loaded.state_dict(), model.state_dict())
    again = build_model(spec)
    load_state(again, to_reference(model))
    assert same_tensors(again.state_dict(), model.state_dict())
    assert len(set(reference_keys(model).values())) == len(model.state_dict())  # one reference name per tensor


def test_the_key_map_is_structural_for_every_preset():
    for name in ("efficientdet-d0", "efficientdet-d7x", "efficientnet-b7"):
        model = build_model(preset(name))
        keys = reference_keys(model)
        assert len(set(keys.values())) == len(keys)
    d7x = reference_keys(build_model(preset("efficientdet-d7x")))
    assert d7x["class_head.bns.5.4.weight"] == "class_net.bn_rep.4.5.bn.weight"  # P8: six levels, five repeats
    assert d7x["backbone.stages.1.0.depthwise.1.weight"] == "backbone.blocks.1.0.bn2.weight"
    assert d7x["backbone.stages.0.0.project.0.weight"] == "backbone.blocks.0.0.conv_pw.weight"  # no expansion: timm's DS block


def test_a_checkpoint_of_another_size_names_the_first_differing_tensor_and_both_shapes(tmp_path):
    path = save_weights(build_model(DETECTOR), tmp_path / "d.pt")
    wider = DETECTOR.replace(channels=24)
    with pytest.raises(WeightsError) as error:
        load_init(build_model(wider), str(path))
    message = str(error.value)
    assert str(path) in message and "'extra_levels" not in message
    assert "'feature_network.cells.0.nodes.0.resample.0.project.0.weight'" in message and "[16, 32, 1, 1]" in message and "[24, 32, 1, 1]" in message
    deeper = DETECTOR.replace(feature_repeats=2)
    with pytest.raises(WeightsError, match=r"'feature_network\.cells\.1\.nodes\.0\.weights'.*missing"):
        load_init(build_model(deeper), str(path))
    with pytest.raises(WeightsError, match=r"does not have, the first 'feature_network\.cells\.1\.nodes\.0\.weights'"):
        load_init(build_model(DETECTOR), str(save_weights(build_model(deeper), tmp_path / "deeper.pt")))


def test_bad_init_sources_are_clear_errors(tmp_path):
    model = build_model(CLASSIFIER)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"something.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match="junk.pt cannot be read"):
        load_init(model, str(tmp_path / "junk.pt"))
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_init(model, str(tmp_path / "list.pt"))
    with pytest.raises(WeightsError, match="first key is 'something.weight'"):
        load_init(model, str(tmp_path / "foreign.pt"))
    with pytest.raises(WeightsError, match="neither a file nor a timm/effdet model name"):
        load_init(model, str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsError, match="detector's weights"):
        load_init(model, str(save_weights(build_model(DETECTOR), tmp_path / "det.pt")))


def test_fine_tuning_to_another_class_count_keeps_all_but_the_class_layer(tmp_path):
    source = randomized(DETECTOR.replace(num_classes=90))
    path = save_weights(source, tmp_path / "coco.pt")
    model = build_model(DETECTOR)
    report = load_init(model, str(path))
    assert report.reinitialized == ["class_head.predict.1"] and "re-initialized" in report.note()
    ours, theirs = model.state_dict(), source.state_dict()
    assert same_tensors(ours, theirs, skip="class_head.predict.1.")
    bias = ours["class_head.predict.1.bias"]
    assert bias.shape == (9 * 6,) and torch.allclose(bias, torch.full_like(bias, -math.log(99)))  # the focal prior 0.01
    assert not torch.equal(ours["class_head.predict.1.weight"][:54], theirs["class_head.predict.1.weight"][:54])


def test_a_classifier_fills_a_detectors_backbone(tmp_path):
    classifier = randomized(CLASSIFIER)
    detector = build_model(DETECTOR)
    report = load_init(detector, str(save_weights(classifier, tmp_path / "b.pt")))
    assert report.part == "backbone" and "the backbone" in report.note()
    assert same_tensors(detector.backbone.state_dict(), {k: v for k, v in classifier.state_dict().items() if not k.startswith(("head.", "fc."))})
    load_state(detector, to_reference(classifier))  # timm's layout too
    assert same_tensors(detector.backbone.state_dict(), classifier.state_dict())


# --------------------------------------------------------------------------------------------
# Fine-tuning options


def test_backbone_lr_scale_and_frozen_backbone_groups():
    model = build_model(DETECTOR)
    groups = parameter_groups(model, scenes_task(backbone_lr_scale=0.1))
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1 and group["lr"] == pytest.approx(0.02 * (0.1 if in_backbone.pop() else 1.0))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.slow  # ~15 s of CPU
def test_a_frozen_backbone_trains_only_the_rest(tmp_path):
    classifier = randomized(CLASSIFIER)
    path = save_weights(classifier, tmp_path / "backbone.pt")
    task = scenes_task(init=str(path), freeze_backbone=True)
    run_trial(DETECTOR, task, Budget(epochs=1), checkpoint_dir=tmp_path / "run")
    trained = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)["model"]
    backbone = {key[len("backbone.") :]: value for key, value in trained.items() if key.startswith("backbone.")}
    assert same_tensors(backbone, classifier.state_dict())  # weights and batch-norm statistics as loaded
    fresh = build_model(DETECTOR).state_dict()
    assert not torch.equal(trained["class_head.predict.1.weight"], fresh["class_head.predict.1.weight"])
    bn_only = scenes_task(init=str(path), freeze_backbone_bn=True)
    run_trial(DETECTOR, bn_only, Budget(epochs=1), checkpoint_dir=tmp_path / "bn")
    trained = torch.load(tmp_path / "bn" / CHECKPOINT_NAME, weights_only=True)["model"]
    assert torch.equal(trained["backbone.stem.1.running_mean"], classifier.state_dict()["stem.1.running_mean"])
    assert torch.equal(trained["backbone.stem.1.weight"], classifier.state_dict()["stem.1.weight"])
    assert not torch.equal(trained["backbone.stem.0.weight"], classifier.state_dict()["stem.0.weight"])


# --------------------------------------------------------------------------------------------
# evaluate


@pytest.mark.slow  # ~35 s of CPU (2 epochs, then the default synthetic val set is generated for the CLI)
def test_evaluate_scores_a_trials_checkpoint_as_the_trial_reported(tmp_path, capsys):
    task = scenes_task(ema=0.9)
    result = run_trial(DETECTOR, task, Budget(epochs=2), checkpoint_dir=tmp_path)
    assert result.metrics["AP"] > 0
    checkpoint = str(tmp_path / CHECKPOINT_NAME)
    scored = evaluate_spec(DETECTOR, scenes_task(init=checkpoint))
    assert scored["metrics"] == pytest.approx(result.metrics, nan_ok=True)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(DETECTOR.to_yaml())
    capsys.readouterr()
    assert main(["evaluate", str(spec_file), "--init", checkpoint, "--batch-size", "4", "--max-val-images", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and set(printed["metrics"]) == set(result.metrics) and checkpoint in printed["notes"][0]


def test_evaluate_without_weights_or_with_the_wrong_classes_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "efficientdet-d0", "--data", "synthetic"]) == 2
    assert "evaluate needs weights: give --init" in capsys.readouterr().err
    path = save_weights(build_model(DETECTOR.replace(num_classes=90)), tmp_path / "coco.pt")
    with pytest.raises(Exception, match="another class count"):
        evaluate_spec(DETECTOR, scenes_task(init=str(path)))


def test_measure_with_init_checks_the_weights_fit(tmp_path, capsys):
    path = save_weights(build_model(DETECTOR), tmp_path / "d.pt")
    spec_file = tmp_path / "wide.yaml"
    spec_file.write_text(DETECTOR.replace(channels=24).to_yaml())
    assert main(["measure", str(spec_file), "--init", str(path), "--latency", "--json"]) == 2
    assert "the first tensor that differs" in capsys.readouterr().err
    spec_file.write_text(DETECTOR.to_yaml())
    assert main(["measure", str(spec_file), "--init", str(path), "--latency", "--batch-size", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spec"]["init"] == str(path) and out["latency"]["batch1"]["median_ms"] > 0


def test_effdet_layout_weights_in_a_spec_off_the_reference_recipe_say_so():
    reference = to_reference(build_model(DETECTOR))
    assert "warning" not in load_state(build_model(DETECTOR), reference).note()
    other = DETECTOR.replace(padding="symmetric", aspect_ratios=[1.0, 2.0, 0.5])
    note = load_state(build_model(other), reference, "tf_efficientdet_d0.pth").note()
    assert "warning: effdet's tf_ weights were trained with padding 'same'" in note
    assert "this spec has padding 'symmetric' and aspect_ratios [1.0, 2.0, 0.5]" in note
