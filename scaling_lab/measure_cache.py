"""The measurement cache: where cached counts and timings live and what they are keyed by (the
spec's hash, the source that builds and counts models, and the counting libraries' versions), so
that edited code or another library never serves a stale figure."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from scaling_lab.files import atomic_write_text
from scaling_lab.schema import library_versions
from scaling_lab.spec import Spec

PACKAGE = Path(__file__).parent
COUNTING_LIBRARIES = ("scaling-lab", "torch", "fvcore")  # their versions are part of the cache key


def cache_dir() -> Path:
    return Path(os.environ.get("SCALING_LAB_CACHE", Path.home() / ".cache" / "scaling-lab"))


def counted_sources(root: Path = PACKAGE, entry: str = "measure.py") -> tuple[str, ...]:
    """The package's source files (relative to ``root``) that ``entry`` imports, directly or
    through other package modules, function-level imports included: the code that builds and
    counts a model. Derived from the imports, so a module that moves or is added is covered."""
    package = root.name
    found: set[str] = set()
    pending = [root / entry]
    while pending:
        path = pending.pop()
        relative = path.relative_to(root).as_posix()
        if relative in found:
            continue
        found.add(relative)
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against the importing module's package
                    parts = path.relative_to(root).parent.parts[: len(path.relative_to(root).parent.parts) - node.level + 1]
                    base = ".".join((package, *parts, *([node.module] if node.module else [])))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                pending.extend(_module_files(root, name))
    return tuple(sorted(found))


def _module_files(root: Path, module: str) -> list[Path]:
    """The files that importing ``module`` runs inside the package at ``root`` (each package's
    ``__init__.py`` on the way, then the module); none for modules outside it or attributes."""
    parts = module.split(".")
    if parts[0] != root.name:
        return []
    files, folder = [], root
    for part in parts[1:]:
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        if (folder / part).is_dir():
            folder = folder / part
        elif (folder / f"{part}.py").is_file():
            return files + [folder / f"{part}.py"]
        else:
            return files
    return files + [folder / "__init__.py"] if (folder / "__init__.py").is_file() else files


@functools.lru_cache(maxsize=None)
def source_fingerprint(root: Path = PACKAGE) -> str:
    """Hash of the Python source that builds and counts models (``counted_sources``): part of
    the cache key, since the package version does not change with edits."""
    digest = hashlib.sha256()
    for relative in counted_sources(root):
        digest.update(relative.encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def measurement_key(spec: Spec) -> str:
    """Cache key of a spec's counts: spec hash, counting source and library versions."""
    versions = library_versions(COUNTING_LIBRARIES)
    return f"{spec.spec_hash}-src{source_fingerprint()}-{'-'.join(f'{k}{v}' for k, v in sorted(versions.items()))}"


def read_cached(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or half-written: measure again


def write_cached(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data))
