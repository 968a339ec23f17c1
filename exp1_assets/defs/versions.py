"""Code versions from source: an asset's version changes exactly when the code it runs changes.

Dagster marks an asset stale when its code version differs from the one its last materialization
recorded. Hashing the library files each asset runs (read as text: nothing heavy is imported into
the code server) makes that automatic, with no version constants to forget to bump.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def code_version(*relative_paths: str) -> str:
    """sha256 (16 hex) over the given files under the package, e.g. `"data/packing.py"`."""
    digest = hashlib.sha256()
    for rel in sorted(relative_paths):
        path = PACKAGE / rel
        if not path.is_file():
            raise ValueError(f"code_version: no source file {rel!r} under {PACKAGE}")
        digest.update(rel.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def file_digest(*paths: Path) -> str:
    """sha256 (16 hex) of files' contents: data versions of artifacts on disk."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
