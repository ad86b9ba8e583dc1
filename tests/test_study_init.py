"""A study whose trials start from pretrained weights: ``fpn_ablation --profile cpu`` with
``task.init`` pointing at the checkpoint of our own classifier, pretrained on synthetic shapes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from scaling_lab.cli import main
from scaling_lab.spec import BackboneSpec
from scaling_lab.train import run_trial
from scaling_lab.train.trainer import CHECKPOINT_NAME
from scaling_lab.trial import Budget, Task

ROOT = Path(__file__).resolve().parents[1]
# The backbone of the study's cpu profile (efficientdet-d0 at width 0.25, depth 0.25).
PROFILE_BACKBONE = BackboneSpec(width=0.25, depth=0.25, resolution=64, num_classes=6)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow  # ~3 min on 2 busy cores: a 2-epoch classifier, then the study's six 1-epoch trials
def test_fpn_ablation_trials_start_from_a_pretrained_backbone(tmp_path):
    knobs = dict(train_per_class=16, val_per_class=4, image_size=64, clutter=0.0)
    pretrain = Task(kind="classification", synthetic=tuple(sorted(knobs.items())), batch_size=16, lr=0.003, optimizer="adamw", latency=False)
    run_trial(PROFILE_BACKBONE, pretrain, Budget(epochs=2), checkpoint_dir=tmp_path / "pretrain")
    checkpoint = tmp_path / "pretrain" / CHECKPOINT_NAME
    classifier = torch.load(checkpoint, weights_only=True)["model"]

    run_dir = tmp_path / "run"
    overrides = [f"task.init={checkpoint}", "task.freeze_backbone=true", "task.epochs=1", "task.latency=false"]
    argv = ["run", str(ROOT / "studies" / "fpn_ablation.yaml"), "--profile", "cpu", "--run-dir", str(run_dir)]
    assert main(argv + [item for override in overrides for item in ("--set", override)]) == 0

    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) == 6 and (frame["state"] == "complete").all() and frame["AP"].between(0, 1).all()
    trial_checkpoints = sorted((run_dir / "checkpoints").glob(f"*/{CHECKPOINT_NAME}"))
    assert len(trial_checkpoints) == 6
    for path in trial_checkpoints:  # a frozen backbone after training is the backbone each trial started from
        trained = torch.load(path, weights_only=True)["model"]
        backbone = {key[len("backbone.") :]: value for key, value in trained.items() if key.startswith("backbone.")}
        assert backbone and all(torch.equal(value, classifier[key]) for key, value in backbone.items()), path
