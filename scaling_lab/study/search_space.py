"""Search spaces: typed parameters over spec fields and scaling coefficients, and cost
constraints checked before any training (read from files by ``search_space_files``).

Parameter names are spec field paths or the compound-scaling coefficients ``alpha`` (depth),
``beta`` (width), ``gamma`` (resolution) and ``phi``: a spec is built by setting the fields on
the base spec, then multiplying depth by alpha^phi, width by beta^phi and resolution by
gamma^phi. Detector resolutions are snapped to a multiple of 2^max_level.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping


from scaling_lab.errors import ScalingLabError
from scaling_lab.scaling import compound_multipliers, fast_compound_exponents, scale_backbone, scale_detector, snap_resolution
from scaling_lab.spec import DetectorSpec, Spec
from scaling_lab.spec_files import apply_overrides

COEFFICIENTS = ("alpha", "beta", "gamma", "phi")
DERIVATION_RULES = ("compound_gamma", "fast_compound")
FAST_COMPOUND_DIMENSIONS = {"alpha": "depth", "beta": "width", "gamma": "resolution"}

class InfeasibleCandidate(ScalingLabError):
    """A configuration no spec satisfies (alpha·beta² above the compound target): rejected."""


@dataclass(frozen=True)
class Parameter:
    """One search parameter. ``values`` holds the list of a choice/grid (one value when fixed), and
    a ``fast_compound`` parameter's width share (kept there so study fingerprints keep their shape)."""

    name: str
    type: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    rule: str | None = None
    target: float = 2.0
    group: str | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def is_active(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(name) in allowed for name, allowed in self.when)

    def grid_values(self, where: str) -> tuple[Any, ...]:
        """Every value a grid over this parameter visits."""
        if self.type in ("choice", "grid"):
            return self.values
        if self.type == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.type == "float" and self.step:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return tuple(round(self.low + i * self.step, 10) for i in range(count))
        raise ScalingLabError(
            f"{where}: parameters.{self.name}: a {self.type} parameter without a step cannot be enumerated by the "
            "grid sampler; give a step (float), list the values (type: grid) or use sampler random, tpe or nsga2"
        )

    def derive(self, values: Mapping[str, Any]) -> float:
        """The value of a derived parameter from those before it."""
        if self.rule == "fast_compound":
            exponents = fast_compound_exponents(float(self.values[0]))
            return round(self.target ** getattr(exponents, FAST_COMPOUND_DIMENSIONS[self.name]), 6)
        alpha, beta = float(values.get("alpha", 1.0)), float(values.get("beta", 1.0))
        squared = self.target / (alpha * beta**2)
        return round(math.sqrt(squared), 6) if squared >= 1 else math.nan


@dataclass(frozen=True)
class Constraint:
    """A cost range, absolute or relative to the base spec's measured cost."""

    cost: str
    min: float | None = None
    max: float | None = None
    relative: bool = False

    def violation(self, value: float, base_value: float) -> str | None:
        """Why ``value`` is out of range, or None when it is inside."""
        measured = value / base_value if self.relative else value
        unit = "x the base" if self.relative else ""
        if self.min is not None and measured < self.min:
            return f"{self.cost} {measured:.4g}{unit} is below the constraint's min {self.min:g}{unit}"
        if self.max is not None and measured > self.max:
            return f"{self.cost} {measured:.4g}{unit} is above the constraint's max {self.max:g}{unit}"
        return None


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...]
    constraints: tuple[Constraint, ...] = ()
    source: str = "search space"

    @property
    def best_references(self) -> dict[str, str]:
        """Parameter name -> group whose best configuration supplies its value."""
        return {p.name: p.group for p in self.parameters if p.type == "best"}

    def resolve_best(self, values: Mapping[str, Any]) -> "SearchSpace":
        """This space with its ``best`` parameters fixed to the given values."""
        parameters = tuple(
            Parameter(p.name, "choice", (values[p.name],), when=p.when) if p.type == "best" else p
            for p in self.parameters
        )
        return SearchSpace(parameters, self.constraints, self.source)

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration of the space (conditional parameters only where active)."""
        configurations: list[dict[str, Any]] = [{}]
        for parameter in self.parameters:
            expanded = []
            for values in configurations:
                if not parameter.is_active(values):
                    expanded.append(values)
                elif parameter.type == "derived":
                    expanded.append({**values, parameter.name: parameter.derive(values)})
                else:
                    expanded.extend({**values, parameter.name: v} for v in parameter.grid_values(self.source))
            configurations = expanded
        unique = {json.dumps(c, sort_keys=True): c for c in configurations}
        return list(unique.values())

    def grid_size(self) -> int:
        """How many configurations ``grid`` gives once ``best`` parameters are resolved (each
        becomes one value); also checks that every parameter can be enumerated."""
        return len(self.resolve_best({name: 1.0 for name in self.best_references}).grid())

    def suggest(self, trial: Any, prefix: str = "", grid: bool = False) -> dict[str, Any]:
        """Values for one Optuna trial (``trial.suggest_*``); fixed and derived parameters are
        computed, not suggested. ``grid`` makes every parameter categorical over its grid values,
        so enqueued grid points are taken exactly."""
        values: dict[str, Any] = {}
        for p in self.parameters:
            if not p.is_active(values):
                continue
            name = prefix + p.name
            if p.type == "derived":
                values[p.name] = p.derive(values)
            elif p.type in ("choice", "grid") and len(p.values) == 1:
                values[p.name] = p.values[0]
            elif grid or p.type in ("choice", "grid"):
                values[p.name] = trial.suggest_categorical(name, list(p.grid_values(self.source)))
            elif p.type == "int":
                values[p.name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.type == "log_float")
        return values

    def optuna_params(self, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """The values ``suggest`` asks Optuna for (not fixed or derived ones), to enqueue a point."""
        return {
            prefix + p.name: values[p.name]
            for p in self.parameters
            if p.name in values and p.type != "derived" and not (p.type in ("choice", "grid") and len(p.values) == 1)
        }

    def build_spec(self, base: Spec, values: Mapping[str, Any]) -> Spec:
        """The base spec with the parameters' fields set, then compound-scaled."""
        fields = {name: value for name, value in values.items() if name not in COEFFICIENTS}
        if isinstance(base, DetectorSpec) and "resolution" in fields:
            max_level = int(fields.get("max_level", base.max_level))
            fields["resolution"] = snap_resolution(fields["resolution"], max_level)
        spec = apply_overrides(base, [f"{name}={json.dumps(value)}" for name, value in fields.items()])
        if not any(name in values for name in COEFFICIENTS):
            return spec
        gamma = values.get("gamma", 1.0)
        if isinstance(gamma, float) and math.isnan(gamma):
            raise InfeasibleCandidate(
                f"alpha {values.get('alpha')} · beta {values.get('beta')}² already exceeds the compound target, "
                "so gamma would be below 1"
            )
        multipliers = compound_multipliers(
            float(values.get("alpha", 1.0)), float(values.get("beta", 1.0)), float(gamma), float(values.get("phi", 1.0))
        )
        if isinstance(spec, DetectorSpec):
            return scale_detector(spec, multipliers.depth, multipliers.width, multipliers.resolution)
        return scale_backbone(spec, multipliers)

    def violation(self, costs: Mapping[str, float], base_costs: Mapping[str, float]) -> str | None:
        """The first constraint the measured costs break, as a sentence; None when all hold."""
        for constraint in self.constraints:
            reason = constraint.violation(costs[constraint.cost], base_costs[constraint.cost])
            if reason:
                return reason
        return None


def config_id(group: str, values: Mapping[str, Any]) -> str:
    """The identity of a configuration: trials that differ only by seed share it."""
    text = json.dumps({"group": group, "params": dict(values)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
