"""Weights in and out: our checkpoints, timm EfficientNet and effdet EfficientDet state dicts.

One structural key map (``reference_keys``) relates every tensor of one of our models to its
name in the reference layout, timm's for a classifier and effdet's for a detector (timm's inside
``backbone.``). It is derived from the model's own modules (which blocks expand, which inputs each
feature-network node takes), so it covers every size and variant without a table per preset.

``load_init`` fills a model from an ``init`` source: a file of ours (a trial checkpoint or
``save_weights`` output), a timm/effdet state dict file, or a model name (``tf_efficientnet_b3``,
``tf_efficientdet_d0``) that timm/effdet download when they are installed. A classifier's weights
given to a detector fill its backbone. A checkpoint trained with another class count keeps
everything but the last class layer, which starts afresh (the focal-loss prior bias for a
detector). Anything else that does not fit is an error naming the first tensor that differs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from scaling_lab.errors import ScalingLabError
from scaling_lab.models.backbone import EfficientNet
from scaling_lab.models.detector import CLASS_PRIOR, EfficientDet
from scaling_lab.spec import REFERENCE_ASPECT_RATIOS

WEIGHTS_FORMAT = "scaling-lab-weights-1"
# Model names that timm (classifiers) and effdet (detectors) resolve and download.
_TIMM_NAME = re.compile(r"^(tf_)?efficientnet_(b[0-8]|l2)(_\w+)?$")
_EFFDET_NAME = re.compile(r"^(tf_)?efficientdet_d\d+x?(_\w+)?$")


# Tensors of a classifier that a detector's backbone leaves out, per layout.
_CLASSIFIER_HEAD = {"ours": ("head.", "fc."), "reference": ("conv_head.", "bn2.", "classifier.")}


class WeightsError(ScalingLabError):
    """An init source that cannot be read or does not fit the spec."""


# --------------------------------------------------------------------------------------------
# The structural key map


def _backbone_keys(backbone: EfficientNet, ours: str, theirs: str) -> dict[str, str]:
    """Our module prefixes -> timm's, for one EfficientNet (``ours``/``theirs``: prefixes)."""
    names = {f"{ours}stem.0": f"{theirs}conv_stem", f"{ours}stem.1": f"{theirs}bn1"}
    for s, stage in enumerate(backbone.stages):
        for b, block in enumerate(stage):
            mine, timm = f"{ours}stages.{s}.{b}.", f"{theirs}blocks.{s}.{b}."
            expands = not isinstance(block.expand, nn.Identity)
            if expands:  # timm's InvertedResidual: conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3
                names |= {mine + "expand.0": timm + "conv_pw", mine + "expand.1": timm + "bn1"}
            names |= {
                mine + "depthwise.0": timm + "conv_dw",
                mine + "depthwise.1": timm + ("bn2" if expands else "bn1"),
                mine + "se.reduce": timm + "se.conv_reduce",
                mine + "se.expand": timm + "se.conv_expand",
                mine + "project.0": timm + ("conv_pwl" if expands else "conv_pw"),
                mine + "project.1": timm + ("bn3" if expands else "bn2"),
            }
    if backbone.classifier:
        names |= {f"{ours}head.0": f"{theirs}conv_head", f"{ours}head.1": f"{theirs}bn2", f"{ours}fc": f"{theirs}classifier"}
    return names


def _conv_keys(module: nn.Module, ours: str, theirs: str, bn: str | None = None) -> dict[str, str]:
    """A (separable) conv of ours -> effdet's SeparableConv2d / ConvBnAct2d names."""
    if isinstance(module, nn.Sequential):
        names = {f"{ours}.0": f"{theirs}.conv_dw", f"{ours}.1": f"{theirs}.conv_pw"}
    else:
        names = {ours: f"{theirs}.conv"}
    if bn is not None:
        names[bn] = f"{theirs}.bn"
    return names


def _detector_keys(model: EfficientDet) -> dict[str, str]:
    names = _backbone_keys(model.backbone, "backbone.", "backbone.")
    if model.extra_levels is not None and not isinstance(model.extra_levels.first.project, nn.Identity):
        index = len(model.backbone_levels)
        names |= {"extra_levels.first.project.0": f"fpn.resample.{index}.conv.conv", "extra_levels.first.project.1": f"fpn.resample.{index}.conv.bn"}
    for c, cell in enumerate(model.feature_network.cells):
        for n, (node, module) in enumerate(zip(cell.graph.nodes, cell.nodes)):
            mine, theirs = f"feature_network.cells.{c}.nodes.{n}.", f"fpn.cell.{c}.fnode.{n}."
            names[mine + "weights"] = theirs + "combine.edge_weights"
            for i, (source, resample) in enumerate(zip(node.inputs, module.resample)):
                if not isinstance(resample.project, nn.Identity):
                    names |= {
                        f"{mine}resample.{i}.project.0": f"{theirs}combine.resample.{source}.conv.conv",
                        f"{mine}resample.{i}.project.1": f"{theirs}combine.resample.{source}.conv.bn",
                    }
            names |= _conv_keys(module.conv, mine + "conv", theirs + "after_combine.conv", mine + "bn")
        for i, project in enumerate(cell.project_outputs):  # pass-through levels of FPN-like graphs
            if not isinstance(project.project, nn.Identity):
                names |= {
                    f"feature_network.cells.{c}.project_outputs.{i}.project.0": f"fpn.cell.{c}.output_resample.{i}.conv.conv",
                    f"feature_network.cells.{c}.project_outputs.{i}.project.1": f"fpn.cell.{c}.output_resample.{i}.conv.bn",
                }
    for head_name, net in (("class_head", "class_net"), ("box_head", "box_net")):
        head = getattr(model, head_name)
        for r, conv in enumerate(head.convs):
            names |= _conv_keys(conv, f"{head_name}.convs.{r}", f"{net}.conv_rep.{r}")
        for level, bns in enumerate(head.bns):
            for r in range(len(bns)):
                names[f"{head_name}.bns.{level}.{r}"] = f"{net}.bn_rep.{r}.{level}.bn"  # effdet: repeat, then level
        names |= _conv_keys(head.predict, f"{head_name}.predict", f"{net}.predict")
    return names


def reference_keys(model: nn.Module) -> dict[str, str]:
    """Every state-dict key of ``model`` -> its key in timm's (classifier) or effdet's (detector) layout."""
    modules = _detector_keys(model) if isinstance(model, EfficientDet) else _backbone_keys(model, "", "")
    mapping = {}
    for key in model.state_dict():
        owner, _, leaf = key.rpartition(".")
        if owner in modules:
            mapping[key] = f"{modules[owner]}.{leaf}"
        elif key in modules:  # a parameter of its own (fusion weights)
            mapping[key] = modules[key]
        else:  # a programming error: a module the map does not know
            raise WeightsError(f"no reference name for tensor {key!r} of {type(model).__name__}")
    return mapping


def to_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict under timm's / effdet's key names."""
    mapping = reference_keys(model)
    return {mapping[key]: value for key, value in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadReport:
    """What ``load_state`` did: where the weights came from and which tensors started afresh."""

    source: str
    layout: str  # "ours" or "reference"
    part: str  # "all" or "backbone"
    reinitialized: list[str] = field(default_factory=list)
    warning: str = ""

    def note(self) -> str:
        text = f"initialized {'the backbone' if self.part == 'backbone' else 'all weights'} from {self.source} ({self.layout} layout)"
        if self.reinitialized:
            text += f"; {', '.join(self.reinitialized)} re-initialized for the new class count"
        if self.warning:
            text += f"; warning: {self.warning}"
        return text


def _reference_recipe_warning(model: nn.Module) -> str:
    """Where a detector given effdet-layout weights departs from what effdet's ``tf_`` weights
    (the published TensorFlow ports) were trained with."""
    spec = model.spec
    departures = []
    if spec.padding != "same":
        departures.append(f"padding {spec.padding!r}")
    if spec.aspect_ratios != REFERENCE_ASPECT_RATIOS:
        departures.append(f"aspect_ratios {spec.to_dict()['aspect_ratios']}")
    if not departures:
        return ""
    return (
        f"effdet's tf_ weights were trained with padding 'same' and aspect_ratios {[list(pair) for pair in REFERENCE_ASPECT_RATIOS]}; "
        f"this spec has {' and '.join(departures)}"
    )


def class_layer(model: nn.Module) -> str:
    """The prefix of the last class layer: a detector's class predictor, a classifier's fc."""
    if isinstance(model, EfficientDet):
        return "class_head.predict.1" if isinstance(model.class_head.predict, nn.Sequential) else "class_head.predict"
    return "fc"


def reset_class_layer(model: nn.Module) -> None:
    """Fresh weights for the last class layer; a detector's bias is the focal-loss prior."""
    layer = model.get_submodule(class_layer(model))
    layer.reset_parameters()
    if isinstance(model, EfficientDet):
        nn.init.constant_(layer.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))


def _layout_of(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(layout, kind) of a state dict: layout ours|reference, kind detector|classifier."""
    if "backbone.stem.0.weight" in state:
        return "ours", "detector"
    if "stem.0.weight" in state:
        return "ours", "classifier"
    if "backbone.conv_stem.weight" in state:
        return "reference", "detector"
    if "conv_stem.weight" in state:
        return "reference", "classifier"
    first = next(iter(state), None)
    raise WeightsError(
        f"the state dict is neither ours nor timm's/effdet's (its first key is {first!r}; expected 'stem.0.weight', "
        "'backbone.stem.0.weight', 'conv_stem.weight' or 'backbone.conv_stem.weight')"
    )


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> LoadReport:
    """Copy ``state`` (ours or the reference layout, detector or classifier) into ``model``.

    A classifier's state given to a detector fills the backbone only. Where the last class
    layer differs only in its class count, it is re-initialized; any other missing tensor or
    shape difference is a ``WeightsError`` naming the first one, with both shapes.
    """
    layout, kind = _layout_of(state)
    detector = isinstance(model, EfficientDet)
    if kind == "detector" and not detector:
        raise WeightsError(f"{source} holds a detector's weights; a backbone (classifier) spec cannot take them")
    part = "backbone" if detector and kind == "classifier" else "all"
    target = model.backbone if part == "backbone" else model
    names = reference_keys(target) if layout == "reference" else {key: key for key in target.state_dict()}
    ours = target.state_dict()  # a classifier's head and fc have no place in a detector's backbone
    class_prefix = class_layer(model) + "." if part == "all" else None
    updated, fresh = {}, []
    for key, expected in ours.items():
        name = names[key]
        alias = f" ({name!r} in the reference layout)" if name != key else ""
        if name not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise WeightsError(
                f"{source} does not fit the spec: the first tensor that differs is {key!r}{alias}, shape {list(expected.shape)}, "
                "missing from it"
            )
        value = state[name]
        if tuple(value.shape) != tuple(expected.shape):
            if class_prefix is not None and key.startswith(class_prefix) and value.shape[1:] == expected.shape[1:]:
                fresh.append(key)
                continue
            raise WeightsError(
                f"{source} does not fit the spec: the first tensor that differs is {key!r}{alias}: "
                f"the checkpoint has shape {list(value.shape)}, the spec's model {list(expected.shape)}"
            )
        updated[key] = value
    used = {names[key] for key in ours}
    if part == "backbone":  # a classifier's head and fc have no place in a detector's backbone
        used |= {name for name in state if name.startswith(_CLASSIFIER_HEAD[layout])}
    extra = [name for name in state if name not in used and not name.endswith("num_batches_tracked")]
    if extra:
        raise WeightsError(
            f"{source} does not fit the spec: it holds tensors the spec's model does not have, the first {extra[0]!r} "
            f"(shape {list(state[extra[0]].shape)}); is it another model size (depth, levels or repeats)?"
        )
    with torch.no_grad():
        for key, value in updated.items():
            ours[key].copy_(value)
    if fresh:
        reset_class_layer(model)
    warning = _reference_recipe_warning(model) if layout == "reference" and part == "all" and detector else ""
    return LoadReport(
        source=source, layout=layout, part=part, reinitialized=sorted({key.rpartition(".")[0] for key in fresh}), warning=warning
    )


def save_weights(model: nn.Module, path: str | Path, spec: Any = None) -> Path:
    """Write ``model``'s weights (and the spec they belong to) as an ``init`` source."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": WEIGHTS_FORMAT, "spec": spec.to_dict() if spec is not None else None, "model": model.state_dict()}, path)
    return path


def _state_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, foreign or pickled-object files
        raise WeightsError(f"init file {path} cannot be read as a PyTorch state dict ({error})") from None
    if not isinstance(data, Mapping):
        raise WeightsError(f"init file {path} holds a {type(data).__name__}, not a state dict")
    if "model" in data and isinstance(data["model"], Mapping):  # a trial checkpoint or save_weights file
        ema = data.get("ema")
        return dict(ema["module"]) if isinstance(ema, Mapping) and "module" in ema else dict(data["model"])
    for wrapper in ("state_dict", "model_state_dict", "state_dict_ema"):  # common training-script wrappers
        if wrapper in data and isinstance(data[wrapper], Mapping):
            return dict(data[wrapper])
    return dict(data)


def _state_by_name(name: str) -> dict[str, torch.Tensor]:
    """Pretrained weights by timm/effdet model name; they download (and cache) them."""
    try:
        if _EFFDET_NAME.match(name):
            import effdet

            return effdet.create_model(name, pretrained=True).state_dict()
        import timm

        return timm.create_model(name, pretrained=True).state_dict()
    except ImportError as error:
        raise WeightsError(
            f"init {name!r} names a {'effdet' if _EFFDET_NAME.match(name) else 'timm'} model, but that library cannot be imported "
            f"({error}); install timm and effdet, or download the state dict and give its file path"
        ) from None
    except Exception as error:  # unknown name, no network, ...
        raise WeightsError(f"init {name!r}: timm/effdet could not provide its pretrained weights ({error})") from None


def read_init(source: str) -> dict[str, torch.Tensor]:
    """The state dict an ``init`` value names: a file, or a timm/effdet model name."""
    path = Path(source).expanduser()
    if path.is_file():
        return _state_from_file(path)
    if _TIMM_NAME.match(source) or _EFFDET_NAME.match(source):
        return _state_by_name(source)
    raise WeightsError(
        f"init {source!r} is neither a file nor a timm/effdet model name (tf_efficientnet_b0 ... b7, efficientnet_b0 ..., "
        "tf_efficientdet_d0 ... d7x)"
    )


def load_init(model: nn.Module, source: str) -> LoadReport:
    """Fill ``model`` from an ``init`` source (see the module docstring)."""
    return load_state(model, read_init(source), source)
