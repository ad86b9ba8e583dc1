"""Property tests of the readers of user input: any mapping or document gives either a valid
object or a ``ScalingLabError`` (an exit 2 with a message), never another exception."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaling_lab.documents import parse_json, parse_yaml
from scaling_lab.errors import ScalingLabError
from scaling_lab.spec import Spec, spec_from_dict
from scaling_lab.study.config import StudyConfig
from scaling_lab.study.study_files import parse_study
from scaling_lab.trial import Budget, Task

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "fpn", "bifpn", "softmax", "efficientdet-d0", "1e-3", "grid", "auto", "AP", "maximize", "-1"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


def mutated(base: dict, paths: list[str]) -> st.SearchStrategy[dict]:
    """``base`` with some of ``paths`` (dotted; a number indexes a list) or new keys set to
    arbitrary values, or deleted."""
    changes = st.lists(st.tuples(st.one_of(st.sampled_from(paths), st.text(max_size=6)), st.one_of(values, st.just(KeyError))), max_size=4)

    def apply(edits: list) -> dict:
        data = copy.deepcopy(base)
        for path, value in edits:
            *parents, last = path.split(".")
            target = data
            for part in parents:
                target = target[int(part)] if isinstance(target, list) and part.isdigit() and int(part) < len(target) else target.get(part) if isinstance(target, dict) else None
                if target is None:
                    break
            if isinstance(target, dict):
                if value is KeyError:
                    target.pop(last, None)
                else:
                    target[last] = value
        return data

    return changes.map(apply)


SPEC = {
    "kind": "detector", "resolution": 128, "min_level": 3, "max_level": 5, "channels": 16, "feature_network": "bifpn",
    "fusion": "fast", "feature_repeats": 1, "head_repeats": 1, "num_classes": 6, "anchor_scale": 4.0,
    "backbone": {"width": 0.25, "depth": 0.25, "dropout": 0.2, "se_ratio": 0.25},
}
SPEC_PATHS = [*SPEC, *(f"backbone.{key}" for key in SPEC["backbone"]), "base"]

STUDY = {
    "name": "prop",
    "base": {"base": "efficientdet-d0", "backbone": {"width": 0.25, "depth": 0.25}, "resolution": 128, "channels": 16},
    "search_space": {"parameters": {"feature_network": ["fpn", "bifpn"], "channels": {"type": "int", "low": 8, "high": 32, "step": 8}}},
    "task": {"synthetic": {"train_images": 16}, "batch_size": 8, "lr": 0.01, "epochs": 1},
    "objectives": [{"metric": "AP", "direction": "maximize"}],
    "sampler": {"type": "tpe", "trials": 3},
    "repeats": 1,
}
STUDY_PATHS = [
    *STUDY, "base.base", "base.channels", "base.backbone", "search_space.parameters", "search_space.parameters.channels",
    "search_space.parameters.channels.type", "search_space.parameters.channels.low", "search_space.constraints",
    "task.lr", "task.epochs", "task.batch_size", "task.synthetic", "task.weight_decay", "task.ema", "task.bad_data",
    "objectives.0", "objectives.0.metric", "sampler.type", "sampler.trials", "early_stopping", "resources", "groups",
    "derive", "storage", "backend", "measure_latency", "profiles", "experiment",
]


@SETTINGS
@given(mutated(SPEC, SPEC_PATHS))
def test_spec_reader_gives_a_spec_or_a_clear_error(data):
    try:
        spec = spec_from_dict(data, "spec.yaml")
    except ScalingLabError:
        return
    assert isinstance(spec, Spec)
    assert spec_from_dict(spec.to_dict()) == spec  # what it accepts round-trips


@SETTINGS
@given(values)
def test_spec_reader_on_any_value(data):
    try:
        assert isinstance(spec_from_dict(data, "spec.yaml"), Spec)
    except ScalingLabError:
        pass


@SETTINGS
@given(mutated(STUDY, STUDY_PATHS))
def test_study_reader_gives_a_study_or_a_clear_error(data):
    try:
        config = parse_study(data, Path("/nonexistent/prop.yaml"), run_dir="/tmp/scaling-lab-property-run")
    except ScalingLabError:
        return
    assert isinstance(config, StudyConfig)
    for number in (config.task.peak_lr, config.task.weight_decay, config.task.ema, config.task.warmup_epochs):
        assert math.isfinite(number)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["lr", "weight_decay", "ema", "warmup_epochs", "grad_clip", "batch_size", "epochs", "eval_every", "max_train_images"]), scalars, max_size=4))
def test_task_and_budget_keys_are_in_range_or_a_clear_error(data):
    for kind in (Task, Budget):
        keys = {key: value for key, value in data.items() if key in kind.__dataclass_fields__}
        try:
            kind.from_dict(keys)
        except ScalingLabError:
            pass


@SETTINGS
@given(st.text(max_size=200))
def test_yaml_reader_gives_a_value_or_a_clear_error(text):
    try:
        parse_yaml(text, "doc.yaml")
    except ScalingLabError:
        pass


@SETTINGS
@given(st.binary(max_size=200))
def test_json_reader_gives_a_value_or_a_clear_error(data):
    try:
        parse_json(data, "doc.json")
    except ScalingLabError:
        pass
