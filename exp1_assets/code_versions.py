"""Code versions from the import graph: an asset's version changes exactly when code it runs changes.

Dagster marks an asset stale when its code version differs from the one its last materialization
recorded. Each asset names the library module it runs (its job's entry point, or the function it
calls); its version is a hash over that module and every `exp1_assets` module it imports,
transitively, function-level imports included. The graph is read from the source with `ast`:
nothing is imported into the code server, and no hand-written file list can drift (one did: the
decode loop was missing from `evaluation_report`'s).
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.name  # "exp1_assets"


def code_version(*entry_modules: str) -> str:
    """sha256 (16 hex) over the sources of `entry_modules` and everything of ours they import.

    >>> len(code_version("exp1_assets.evaluation.comparison"))
    16
    """
    digest = hashlib.sha256()
    for path in module_closure(*entry_modules):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def module_closure(*entry_modules: str) -> list[Path]:
    """The source files of `entry_modules` and of every package module they import, sorted.

    Parent packages' `__init__.py` count too: importing a module runs them.

    >>> [p.name for p in module_closure("exp1_assets.settings")]
    ['__init__.py', 'settings.py']
    """
    seen: set[Path] = set()
    pending = [_source(name) for name in entry_modules]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending.extend(_imports_of(path))
    return sorted(seen)


def _source(module: str) -> Path:
    """The file of `exp1_assets.x.y`: `x/y.py` or `x/y/__init__.py` under the package."""
    path = _find(module)
    if path is None:
        raise ValueError(f"code_version: no source for module {module!r} under {PACKAGE}")
    return path


def _find(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports_of(path: Path) -> tuple[Path, ...]:
    """Our modules that `path` imports (anywhere in it), plus the `__init__.py` of its packages."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    own = _module_name(path).split(".")
    names.update(".".join(own[:i]) for i in range(1, len(own)))  # parent packages run first
    found = (_find(name) for name in names if name.split(".")[0] == ROOT)
    return tuple(sorted({p for p in found if p is not None}))


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)
