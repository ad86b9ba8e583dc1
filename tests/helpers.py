"""What the tests share, in one place: tiny specs, tasks and study files, a fast deterministic
stand-in for the trainer, and the environment a test's subprocess needs. (No tests here.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import yaml

from scaling_lab.presets import preset
from scaling_lab.spec import BackboneSpec, DetectorSpec
from scaling_lab.trial import Task, TrialResult

ROOT = Path(__file__).resolve().parents[1]

# A detector small enough to run forward and backward in well under a second on a CPU.
TINY = preset("efficientdet-d0").replace(
    resolution=128, channels=16, feature_repeats=2, head_repeats=1, num_classes=3,
    backbone={"width": 0.25, "depth": 0.34, "stem_channels": 8, "resolution": 128},
)

# The trainer's tests: a detector at 64 px on eight synthetic scenes.
TINY_BACKBONE = BackboneSpec(width=0.25, depth=0.34)
TINY_DETECTOR = DetectorSpec(
    backbone=TINY_BACKBONE, resolution=64, min_level=3, max_level=5, channels=16, feature_repeats=1, head_repeats=1, num_classes=6
)
TINY_SCENES = dict(train_images=8, val_images=4, image_size=64, min_object_size=12.0, max_object_size=48.0, max_objects=3, clutter=0.3)


def tiny_task(scenes: dict = TINY_SCENES, **changes) -> Task:
    """A detection task on ``scenes`` (synthetic knobs) at batch 4."""
    fields = dict(synthetic=tuple(sorted(scenes.items())), batch_size=4, lr=0.02, latency=False)
    return Task(**{**fields, **changes})


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a test's Python subprocess: this checkout importable (``tests.helpers``)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}

# The base spec of the study tests' tiny studies (a study file's ``base`` mapping).
TINY_BASE = {
    "base": "efficientdet-d0",
    "backbone": {"width": 0.25, "depth": 0.25},
    "resolution": 128,
    "channels": 16,
    "feature_repeats": 1,
    "head_repeats": 1,
}


def fake_trial(spec, task, budget, report=None, seed=0, checkpoint_dir=None, device=None, progress=False, tracking=None):
    """AP grows with channels and epochs; PANet raises like a CUDA OOM would; FAKE_TRIAL_SLEEP
    slows each epoch down (for the kill test). It writes no curves (``tracking`` is taken, as a
    study passes it to a trial function that takes ``**kwargs``, and left unused)."""
    curve = []
    for epoch in range(1, budget.epochs + 1):
        time.sleep(float(os.environ.get("FAKE_TRIAL_SLEEP", "0")))
        metrics = {"epoch": epoch, "train_loss": 1.0 / epoch, "AP": 0.01 * epoch * spec.channels / 16 + 0.001 * seed}
        curve.append(metrics)
        if report is not None:
            report(epoch, metrics)
    if spec.feature_network == "panet":
        raise RuntimeError("CUDA out of memory (simulated)")
    final = {k: v for k, v in curve[-1].items() if k not in ("epoch", "train_loss")}
    return TrialResult(spec.spec_hash, seed, final, 1, 1, 1, 1, None, 0.01, curve)


def write_study(folder: Path, **changes) -> Path:
    """A tiny grid study: three feature networks x phi 0/1, two seeds, one epoch; a change to
    None drops the key (``search_space=None`` with ``groups``)."""
    study = {
        "name": "tiny",
        "base": TINY_BASE,
        "search_space": {
            "parameters": {
                "feature_network": {"type": "choice", "values": ["fpn", "panet", "bifpn"]},
                "channels": {"type": "grid", "values": [16, 24]},
            }
        },
        # latency off: timing each spec (the driver's job) is measure's business, not these tests'
        "task": {"synthetic": {"train_images": 16, "val_images": 8, "image_size": 128, "max_object_size": 96}, "batch_size": 8, "epochs": 1, "latency": False},
        "objectives": [{"metric": "AP", "direction": "maximize"}],
        "sampler": {"type": "grid"},
        "repeats": 2,
        "run_dir": str(folder / "run"),
    }
    study = {key: value for key, value in {**study, **changes}.items() if value is not None}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# The true AP of each feature network in ``noisy_trial``: PANet clearly better, BiFPN no different from FPN.
NOISY_MEANS = {"fpn": 0.30, "panet": 0.40, "bifpn": 0.30}


def noisy_trial(spec, task, budget, report=None, seed=0, checkpoint_dir=None, device=None, progress=False):
    """AP = the feature network's true mean (``NOISY_MEANS``) + seed noise shared by all networks
    on that seed (sd 0.02) + its own (sd 0.005); FAKE_TRIAL_SLEEP slows it down (for kill tests)."""
    time.sleep(float(os.environ.get("FAKE_TRIAL_SLEEP", "0")))
    own = np.random.default_rng([seed, list(NOISY_MEANS).index(spec.feature_network)]).normal(0, 0.005)
    metrics = {"AP": NOISY_MEANS[spec.feature_network] + np.random.default_rng([seed]).normal(0, 0.02) + own}
    if report is not None:
        report(1, metrics)
    return TrialResult(spec.spec_hash, seed, metrics, 1, 1, 1, 1, None, 0.01, [{"epoch": 1, **metrics}])


def adaptive_study(folder: Path, **repeats) -> Path:
    """``write_study`` of the three feature networks with adaptive repeats, 3 to 6 seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    changes = {key: repeats.pop(key) for key in ("name", "storage") if key in repeats}
    return write_study(
        folder,
        search_space={"parameters": {"feature_network": ["fpn", "panet", "bifpn"]}},
        repeats={"min": 3, "max": 6, "until": "resolved", **repeats},
        **changes,
    )


def seeds_per_network(frame) -> dict[str, list[int]]:
    """The seeds of each feature network's complete trials."""
    done = frame[frame["state"] == "complete"]
    return {network: sorted(int(s) for s in rows["seed"]) for network, rows in done.groupby("feature_network")}


def dying_trial(spec, task, budget, report=None, seed=0, checkpoint_dir=None, device=None, progress=False):
    """``fake_trial``, except that PANet kills its worker process (as the host's OOM killer would)."""
    if spec.feature_network == "panet":
        os._exit(1)
    return fake_trial(spec, task, budget, report, seed, checkpoint_dir, device, progress)


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard run: its (step, value) points, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# A study's task whose trials the real trainer runs in seconds: eight 64 px scenes, two steps an epoch.
TINY_STUDY_TASK = {"synthetic": {"train_images": 8, "val_images": 4, "image_size": 64, "max_object_size": 48}, "batch_size": 4, "epochs": 1, "latency": False}
