"""Search space files: the YAML (or mapping) form of a ``SearchSpace``, checked key by key so
that a bad value names its file, parameter and what would be valid.

A search space file (``search_spaces/*.yaml``) holds::

    parameters:
      feature_network: {type: choice, values: [fpn, panet, bifpn]}
      fusion: {type: choice, values: [sum, fast], when: {feature_network: bifpn}}
      channels: {type: int, low: 16, high: 64, step: 8}
      backbone.width: {type: float, low: 0.5, high: 1.5}
      lr_scale: ...                       # (any spec field path, nested with dots)
      alpha: {type: grid, values: [1.1, 1.2, 1.3]}
      beta: 1.1                           # a bare value is a fixed parameter
      gamma: {type: derived, rule: compound_gamma}   # alpha·beta²·gamma² = target (2)
      phi: {type: choice, values: [0, 1, 2]}
      # or Dollár et al.'s fast compound scaling (width takes width_share of the FLOPs growth):
      # alpha: {type: derived, rule: fast_compound, width_share: 0.8}  (and the same for beta, gamma)
    constraints:
      flops: {min: 1.8, max: 2.2, relative: true}    # relative to the study's base spec
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from scaling_lab.errors import ScalingLabError
from scaling_lab.schema import MEASURED_COSTS
from scaling_lab.scaling import FAST_WIDTH_SHARE
from scaling_lab.spec import Spec
from scaling_lab.spec_files import read_yaml
from scaling_lab.study.search_space import COEFFICIENTS, DERIVATION_RULES, FAST_COMPOUND_DIMENSIONS, Constraint, Parameter, SearchSpace

PARAMETER_TYPES = ("choice", "grid", "int", "float", "log_float", "derived", "best")
SPACE_KEYS = ("parameters", "constraints")
# Keys each parameter type accepts besides ``type`` and ``when``.
_TYPE_KEYS = {
    "choice": {"values"},
    "grid": {"values"},
    "int": {"low", "high", "step", "log"},
    "float": {"low", "high", "step"},
    "log_float": {"low", "high"},
    "derived": {"rule", "target", "width_share"},
    "best": {"group"},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _fail(where: str, message: str) -> ScalingLabError:
    return ScalingLabError(f"{where}: {message}")


def _spec_field_paths(base: Spec) -> set[str]:
    """Every settable field of a spec, nested backbone fields as ``backbone.<field>``."""
    paths = set()
    for key, value in base.to_dict().items():
        if key == "kind":
            continue
        if isinstance(value, dict):
            paths.update(f"{key}.{inner}" for inner in value if inner != "kind")
        else:
            paths.add(key)
    return paths


def _number(where: str, key: str, value: Any) -> float:
    if not _is_number(value):
        raise _fail(where, f"{key}: expected a number, got {value!r}")
    return value


def _parse_parameter(where: str, name: str, raw: Any, earlier: dict[str, Parameter], fields: set[str]) -> Parameter:
    key = f"parameters.{name}"
    if name not in COEFFICIENTS and name not in fields:
        raise _fail(
            where,
            f"{key}: {name!r} is neither a spec field nor a scaling coefficient; valid names are "
            f"{', '.join(COEFFICIENTS)} and the spec fields {', '.join(sorted(fields))}",
        )
    if _is_scalar(raw):
        return Parameter(name, "choice", (raw,))
    if isinstance(raw, list):
        raw = {"type": "choice", "values": raw}
    if not isinstance(raw, Mapping):
        raise _fail(where, f"{key}: expected a value, a list or a mapping with a type, got {raw!r}")
    kind = raw.get("type")
    if kind not in PARAMETER_TYPES:
        raise _fail(where, f"{key}.type: {kind!r} is not valid; valid types are {', '.join(PARAMETER_TYPES)}")
    allowed = _TYPE_KEYS[kind] | {"type", "when"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _fail(where, f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; a {kind} parameter takes {', '.join(sorted(allowed))}")
    when = _parse_when(where, key, raw.get("when"), earlier)
    if kind in ("choice", "grid"):
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(where, f"{key}.values: expected a non-empty list of values, got {values!r}")
        bad = [v for v in values if not (_is_number(v) if kind == "grid" else _is_scalar(v))]
        if bad:
            valid = "numbers" if kind == "grid" else "numbers, strings or booleans"
            raise _fail(where, f"{key}.values: {bad[0]!r} is not valid; a {kind} lists {valid}")
        return Parameter(name, kind, tuple(dict.fromkeys(values)), when=when)
    if kind in ("int", "float", "log_float"):
        for bound in ("low", "high"):
            if bound not in raw:
                raise _fail(where, f"{key}.{bound}: missing; a {kind} parameter needs low and high")
        low, high = _number(where, f"{key}.low", raw["low"]), _number(where, f"{key}.high", raw["high"])
        step = raw.get("step")
        if step is not None and _number(where, f"{key}.step", step) <= 0:
            raise _fail(where, f"{key}.step: {step} must be positive")
        if kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise _fail(where, f"{key}: an int parameter needs integer low, high and step, got {low!r}, {high!r}, {step!r}")
        if low > high:
            raise _fail(where, f"{key}: low {low} is above high {high}; the range is empty")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise _fail(where, f"{key}.log: expected true or false, got {log!r}")
        if (kind == "log_float" or log) and low <= 0:
            raise _fail(where, f"{key}.low: {low} must be positive on a log scale")
        if log and step not in (None, 1):
            raise _fail(
                where,
                f"{key}: log: true with step {step} is not valid (a log-scale int is sampled with step 1); "
                "drop the step, drop log, or list the values (type: grid)",
            )
        return Parameter(name, kind, low=float(low), high=float(high), step=step, log=log, when=when)
    if kind == "derived":
        rule = raw.get("rule")
        if rule not in DERIVATION_RULES:
            raise _fail(where, f"{key}.rule: {rule!r} is not valid; valid rules are {', '.join(DERIVATION_RULES)}")
        target = _number(where, f"{key}.target", raw.get("target", 2.0))
        if target <= 0:
            raise _fail(where, f"{key}.target: {target} must be positive")
        if rule == "fast_compound":
            if name not in FAST_COMPOUND_DIMENSIONS:
                raise _fail(where, f"{key}: the fast_compound rule sets alpha, beta and gamma, not {name!r}")
            share = _number(where, f"{key}.width_share", raw.get("width_share", FAST_WIDTH_SHARE))
            if not 0 <= share <= 1:
                raise _fail(where, f"{key}.width_share: {share} must be in [0, 1] (1: width only; 1/3: uniform compound scaling; 0.8: the paper's fast scaling)")
            return Parameter(name, kind, values=(float(share),), rule=rule, target=float(target), when=when)
        if "width_share" in raw:
            raise _fail(where, f"{key}.width_share: only the fast_compound rule takes a width share")
        if not {"alpha", "beta"} & set(earlier):
            raise _fail(where, f"{key}: compound_gamma needs alpha and/or beta declared before it")
        if name != "gamma":
            raise _fail(where, f"{key}: the compound_gamma rule solves for the parameter named gamma, not {name!r}")
        return Parameter(name, kind, rule=rule, target=float(target), when=when)
    group = raw.get("group")
    if not isinstance(group, str) or not group:
        raise _fail(where, f"{key}.group: expected the name of an earlier group of the study, got {group!r}")
    return Parameter(name, kind, group=group, when=when)


def _parse_when(where: str, key: str, raw: Any, earlier: dict[str, Parameter]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(where, f"{key}.when: expected a mapping of earlier parameter -> value(s), got {raw!r}")
    conditions = []
    for name, allowed in raw.items():
        if name not in earlier:
            valid = ", ".join(earlier) or "none (declare the parameter it depends on first)"
            raise _fail(where, f"{key}.when: {name!r} is not an earlier parameter; valid names are {valid}")
        conditions.append((name, tuple(allowed) if isinstance(allowed, list) else (allowed,)))
    return tuple(conditions)


def _parse_constraint(where: str, cost: str, raw: Any) -> Constraint:
    key = f"constraints.{cost}"
    if cost not in MEASURED_COSTS:
        raise _fail(where, f"{key}: {cost!r} is not a constrained cost; valid costs are {', '.join(MEASURED_COSTS)}")
    if not isinstance(raw, Mapping):
        raise _fail(where, f"{key}: expected a mapping with min and/or max (and relative: true|false), got {raw!r}")
    unknown = sorted(set(raw) - {"min", "max", "relative"})
    if unknown:
        raise _fail(where, f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are min, max, relative")
    low, high = raw.get("min"), raw.get("max")
    if low is None and high is None:
        raise _fail(where, f"{key}: give min, max or both")
    for bound, value in (("min", low), ("max", high)):
        if value is not None and (_number(where, f"{key}.{bound}", value) < 0):
            raise _fail(where, f"{key}.{bound}: {value} must be at least 0")
    if low is not None and high is not None and low > high:
        raise _fail(where, f"{key}: min {low} is above max {high}; no candidate can satisfy it")
    relative = raw.get("relative", False)
    if not isinstance(relative, bool):
        raise _fail(where, f"{key}.relative: expected true or false, got {relative!r}")
    return Constraint(cost, low, high, relative)


def parse_search_space(data: Any, base: Spec, where: str) -> SearchSpace:
    """Validate a search space mapping against the base spec it will be applied to."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"expected a mapping with keys {', '.join(SPACE_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(SPACE_KEYS)}")
    raw_parameters = data.get("parameters")
    if not isinstance(raw_parameters, Mapping) or not raw_parameters:
        raise _fail(where, "parameters: expected a non-empty mapping of parameter name -> definition")
    fields = _spec_field_paths(base)
    parameters: dict[str, Parameter] = {}
    for name, raw in raw_parameters.items():
        parameters[str(name)] = _parse_parameter(where, str(name), raw, parameters, fields)
    raw_constraints = data.get("constraints") or {}
    if not isinstance(raw_constraints, Mapping):
        raise _fail(where, f"constraints: expected a mapping of cost -> range, got {raw_constraints!r}")
    constraints = tuple(_parse_constraint(where, str(cost), raw) for cost, raw in raw_constraints.items())
    return SearchSpace(tuple(parameters.values()), constraints, where)


def load_search_space(source: str | Path | Mapping[str, Any], base: Spec, relative_to: Path | None = None, where: str = "search_space") -> SearchSpace:
    """A search space from a YAML file (relative to ``relative_to``) or an inline mapping."""
    if isinstance(source, Mapping):
        return parse_search_space(source, base, where)
    if not isinstance(source, (str, Path)):
        raise _fail(where, f"expected the path of a search space file or an inline mapping, got {source!r}")
    path = Path(source)
    if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
        path = relative_to / path  # relative to the study file first, as a base spec file is
    if not path.is_file():
        raise _fail(where, f"search space file {str(source)!r} does not exist (looked for {path})")
    return parse_search_space(read_yaml(path), base, str(path))
