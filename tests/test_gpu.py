"""The CUDA path: bf16 + channels_last training learns, a CUDA checkpoint resumes exactly, an
out-of-memory trial fails alone, torch.compile trains.

Marked ``gpu`` and skipped without CUDA (CI has none). On a GPU machine:

    python -m pytest -m gpu tests/test_gpu.py -q

``SCALING_LAB_GPU_TEST_DEVICE=cpu`` runs them on the CPU instead, to check the tests' own logic
(slow; the out-of-memory test needs CUDA and is skipped).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from scaling_lab.data import make_synthetic_coco
from scaling_lab.spec import BackboneSpec, DetectorSpec
from scaling_lab.study import load_study, run_study
from scaling_lab.train import run_trial, trainer
from scaling_lab.trial import Budget, Task

from tests.helpers import write_study

DEVICE = os.environ.get("SCALING_LAB_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.usefixtures("cache_in_tmp"),
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
]

SMALL_DETECTOR = DetectorSpec(
    backbone=BackboneSpec(width=0.25, depth=0.34), resolution=128, min_level=3, max_level=5, channels=32,
    feature_repeats=1, head_repeats=1, num_classes=6,
)
SCENES = dict(train_images=16, val_images=8, image_size=128, min_object_size=24.0, max_object_size=96.0, max_objects=3, clutter=0.3)


def small_task(**changes) -> Task:
    fields = dict(synthetic=tuple(sorted(SCENES.items())), batch_size=8, optimizer="adamw", lr=0.01, warmup_epochs=2, latency=False)
    return Task(**{**fields, **changes})


def test_bf16_channels_last_training_learns_the_training_scenes():
    """The CPU test's bar (AP50 >= 0.9 on 16 scenes it trains on), met in bf16 + channels_last."""
    root = make_synthetic_coco(**{**SCENES, "val_images": 1})
    task = Task(
        data=str(root), val_images=str(root / "train" / "images"), val_annotations=str(root / "train" / "annotations.json"),
        batch_size=8, optimizer="adamw", lr=0.01, warmup_epochs=2, augment=False, latency=False, bf16=True, channels_last=True,
    )
    result = run_trial(SMALL_DETECTOR, task, Budget(epochs=60, eval_every=10), device=DEVICE)
    first, last = result.curve[0], result.curve[-1]
    assert last["AP"] > first["AP"] and last["train_loss"] < first["train_loss"], result.curve
    assert result.metrics["AP50"] >= 0.9, result.curve
    if DEVICE == "cuda":
        assert result.versions["device"] == torch.cuda.get_device_name()


def test_checkpoint_written_on_the_device_resumes_with_the_same_next_step_loss(tmp_path, monkeypatch):
    losses: list[float] = []
    original = trainer.DetectionObjective.loss

    def recording(self, model, batch, channels_last):
        loss = original(self, model, batch, channels_last)
        losses.append(loss.detach().float().item())
        return loss

    monkeypatch.setattr(trainer.DetectionObjective, "loss", recording)
    task, budget = small_task(ema=0.99), Budget(epochs=2)
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    def keep_first_checkpoint(epoch, metrics):
        if epoch == 1:
            resumed_dir.mkdir()
            shutil.copy(straight_dir / trainer.CHECKPOINT_NAME, resumed_dir / trainer.CHECKPOINT_NAME)

    run_trial(SMALL_DETECTOR, task, budget, report=keep_first_checkpoint, checkpoint_dir=straight_dir, device=DEVICE)
    steps_per_epoch = len(losses) // 2
    straight_losses, losses[:] = list(losses), []
    resumed = run_trial(SMALL_DETECTOR, task, budget, checkpoint_dir=resumed_dir, device=DEVICE)
    assert resumed.notes == [f"resumed from {resumed_dir / trainer.CHECKPOINT_NAME} after epoch 1"]
    assert len(losses) == steps_per_epoch
    # Same weights, optimizer state, RNG and batch: the same loss (forward kernels are deterministic).
    assert losses[0] == pytest.approx(straight_losses[steps_per_epoch], rel=1e-4), (losses, straight_losses)


@pytest.mark.skipif(DEVICE != "cuda", reason="out-of-memory is forced with CUDA's per-process memory cap")
def test_out_of_memory_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    """Capped at 2 GB, a 1024-pixel batch cannot train; the 128-pixel trial after it can."""
    path = write_study(
        tmp_path,
        search_space={"parameters": {"resolution": {"type": "grid", "values": [1024, 128]}}},
        task={"synthetic": {"train_images": 16, "val_images": 8, "image_size": 128, "max_object_size": 96}, "batch_size": 16, "epochs": 1, "latency": False},
        repeats=1,
    )
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2e9 / torch.cuda.get_device_properties(0).total_memory)
    try:
        frame = run_study(load_study(path), out=None).sort_values("trial_id")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert frame["resolution"].tolist() == [1024, 128]
    assert frame["state"].tolist() == ["failed", "complete"], frame[["state", "error"]]
    assert frame["error"].iloc[0].startswith("OutOfMemoryError: CUDA out of memory"), frame["error"].iloc[0]
    assert math.isfinite(frame["AP"].iloc[1])


def test_torch_compile_trains():
    result = run_trial(SMALL_DETECTOR, small_task(compile=True), Budget(epochs=3, eval_every=3), device=DEVICE)
    losses = [entry["train_loss"] for entry in result.curve]
    assert all(math.isfinite(loss) for loss in losses) and set(result.metrics) >= {"AP", "AP50"}
