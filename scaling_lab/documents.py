"""Reading YAML and JSON documents with limits, so that a hostile or broken file is an error
naming it rather than a ``RecursionError``, a memory blow-up or a hang.

Limits: a YAML document (spec, study, search space) is at most ``MAX_YAML_BYTES``; any document
nests at most ``MAX_DEPTH`` levels; YAML anchors may not refer to themselves, and the document
with every alias expanded has at most ``MAX_EXPANDED_NODES`` nodes (a "billion laughs" file of a
few hundred bytes expands to billions). JSON files (``study.json``, COCO annotations) have no size
limit (COCO's are hundreds of MB) but the same nesting limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from scaling_lab.errors import ScalingLabError

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 1_000_000


class DocumentError(ScalingLabError):
    """A YAML or JSON file that cannot be read, or that breaks a limit; the message names it."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.MappingNode, where: str) -> None:
    """A key given twice in one mapping is an error (YAML readers keep the last one silently, so
    a study would run with a value its author did not mean); ``<<`` merges may override."""
    first_line: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_line:
            raise DocumentError(
                f"{where}: key {key.value!r} appears twice in one mapping (lines {first_line[key.tag, key.value]} and {line}); "
                "keep one of them"
            )
        first_line[key.tag, key.value] = line


def _node_measure(node: yaml.Node, where: str, memo: dict[int, tuple[int, int]], open_nodes: set[int], depth: int) -> tuple[int, int]:
    """(nesting depth, node count with aliases expanded) of a composed YAML node."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise DocumentError(f"{where}: a YAML anchor refers to itself (a recursive alias); write the value out instead")
    if depth > MAX_DEPTH:
        raise DocumentError(f"{where}: nested more than {MAX_DEPTH} levels deep; a scaling-lab document needs far fewer")
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        _check_unique_keys(node, where)
        children = [item for pair in node.value for item in pair]
    else:
        memo[key] = (1, 1)
        return memo[key]
    open_nodes.add(key)
    deepest, count = 0, 1
    for child in children:
        child_depth, child_count = _node_measure(child, where, memo, open_nodes, depth + 1)
        deepest, count = max(deepest, child_depth), count + child_count
        if count > MAX_EXPANDED_NODES:
            raise DocumentError(
                f"{where}: with its aliases expanded the document has more than {MAX_EXPANDED_NODES:,} values "
                "(anchors that expand without bound); write the values out instead"
            )
    open_nodes.discard(key)
    memo[key] = (deepest + 1, count)
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """A YAML (or JSON) document within the limits; ``where`` names it in errors."""
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise DocumentError(f"{where}: larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB; a spec, study or search space is a few KB")
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _node_measure(node, where, {}, set(), 1)
        return loader.construct_document(node)
    except RecursionError:
        raise DocumentError(f"{where}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"{where}: not valid UTF-8 YAML/JSON ({exc})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_document(path: Path) -> Any:
    """A YAML/JSON file's content; unreadable, non-UTF-8, invalid or over-limit files name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{path}: not valid UTF-8 YAML/JSON ({exc})") from None
    return parse_yaml(text, str(path))


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(data: bytes | str, where: str) -> Any:
    """A JSON document within the nesting limit; ``where`` names it in errors."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise DocumentError(f"{where}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{where}: not valid JSON ({exc})") from None
    if _json_depth(value) > MAX_DEPTH:
        raise DocumentError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    return value
