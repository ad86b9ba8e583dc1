"""Feature networks as data: each one cell is a list of nodes (output level, input node ids).

Ids 0..n-1 are the cell's inputs, one per level from min_level up; each new node takes the next
id. A cell's output at a level is the last node at that level (an input passes through when no
node writes its level). Repeating a network means stacking its cell. One fusion module
(``models.feature_network``) builds any of them.

A node fuses its inputs by the spec's rule unless it names its own: ``fusion`` (a per-node
weight method, as the official ``fpn_configs`` allow) or ``op``, an operation of
``models.feature_network.NODE_OPS`` (e.g. NAS-FPN's global-pool attention) that replaces the
weighted fusion for that node.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling_lab.errors import SpecError


@dataclass(frozen=True)
class Node:
    level: int
    inputs: tuple[int, ...]
    fusion: str | None = None  # this node's fusion rule; None: the spec's
    op: str | None = None  # this node's own operation in place of fusion; None: fusion


@dataclass(frozen=True)
class FeatureGraph:
    min_level: int
    max_level: int
    nodes: tuple[Node, ...]

    @property
    def levels(self) -> range:
        return range(self.min_level, self.max_level + 1)

    @property
    def output_ids(self) -> dict[int, int]:
        """Level -> id of the node that is the cell's output at that level."""
        outputs = {level: level - self.min_level for level in self.levels}
        for index, node in enumerate(self.nodes):
            outputs[node.level] = len(self.levels) + index
        return outputs


class _Builder:
    """Appends nodes while tracking every id written at each level."""

    def __init__(self, min_level: int, max_level: int):
        self.min_level, self.max_level = min_level, max_level
        self.ids_at = {level: [level - min_level] for level in range(min_level, max_level + 1)}
        self.nodes: list[Node] = []

    def last(self, level: int) -> int:
        return self.ids_at[level][-1]

    def add(self, level: int, inputs: list[int], fusion: str | None = None, op: str | None = None) -> int:
        node_id = len(self.ids_at) + len(self.nodes)
        self.nodes.append(Node(level, tuple(inputs), fusion, op))
        self.ids_at[level].append(node_id)
        return node_id

    def top_down(self) -> list[int]:
        return [self.add(level, [self.last(level), self.last(level + 1)]) for level in range(self.max_level - 1, self.min_level - 1, -1)]

    def graph(self) -> FeatureGraph:
        return FeatureGraph(self.min_level, self.max_level, tuple(self.nodes))


def fpn(min_level: int, max_level: int) -> FeatureGraph:
    """Top-down FPN (Lin et al. 2017): each level fuses itself with the upsampled level above."""
    builder = _Builder(min_level, max_level)
    builder.top_down()
    return builder.graph()


def panet(min_level: int, max_level: int) -> FeatureGraph:
    """PANet (Liu et al. 2018): top-down, then a bottom-up path."""
    builder = _Builder(min_level, max_level)
    builder.top_down()
    for level in range(min_level + 1, max_level + 1):
        builder.add(level, [builder.last(level), builder.last(level - 1)])
    return builder.graph()


def bifpn(min_level: int, max_level: int) -> FeatureGraph:
    """BiFPN: top-down, then bottom-up nodes that also take every earlier node of their level
    (the same-level skip from the input); for P3-P7 that is the paper's 8 nodes."""
    builder = _Builder(min_level, max_level)
    builder.top_down()
    for level in range(min_level + 1, max_level + 1):
        builder.add(level, [*builder.ids_at[level], builder.last(level - 1)])
    return builder.graph()


def fcfpn(min_level: int, max_level: int) -> FeatureGraph:
    """Fully-connected FPN: a top-down and a bottom-up column like PANet, where every node takes
    every node of the column before it (inputs, then top-down nodes)."""
    builder = _Builder(min_level, max_level)
    levels = range(min_level, max_level + 1)
    inputs = [builder.last(level) for level in levels]
    top_down = [builder.add(level, inputs) for level in reversed(levels)]
    for level in levels:
        builder.add(level, top_down)
    return builder.graph()


# The NAS-FPN cell found by Ghiasi et al. 2019 for P3-P7, as in the official EfficientDet code:
# (level offset from min_level, input ids).
_NASFPN_CELL = ((3, (1, 3)), (1, (1, 5)), (0, (0, 6)), (1, (6, 7)), (2, (7, 8)), (4, (6, 9)), (3, (9, 10)))


def nasfpn(min_level: int, max_level: int) -> FeatureGraph:
    """The NAS-FPN cell (Ghiasi et al. 2019); it is defined for five levels only."""
    if max_level - min_level != 4:
        raise SpecError(
            f"feature_network 'nasfpn' is the NAS-FPN cell found for five levels; levels "
            f"{min_level}..{max_level} are {max_level - min_level + 1} (set max_level = min_level + 4)"
        )
    builder = _Builder(min_level, max_level)
    for offset, inputs in _NASFPN_CELL:
        builder.add(min_level + offset, list(inputs))
    return builder.graph()


GRAPHS = {"fpn": fpn, "panet": panet, "nasfpn": nasfpn, "fcfpn": fcfpn, "bifpn": bifpn}


def feature_graph(name: str, min_level: int, max_level: int) -> FeatureGraph:
    if name not in GRAPHS:
        raise SpecError(f"feature_network {name!r} is not valid; valid values are {', '.join(GRAPHS)}")
    return GRAPHS[name](min_level, max_level)
