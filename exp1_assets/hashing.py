"""Content digests: the data versions of artifacts on disk and the checkpoint manifests' hashes.

Two forms, both sha256, and both persisted (so their values must never change):
- `content_digest` / `directory_digest`: 16 hex digits over (file name, bytes) of files in
  sorted path order. Dagster data versions of splits, tokenizer, packed blocks and checkpoints.
- `file_sha256`: the full hex digest of one file's bytes (`checkpoint_manifest.json`).

Plain Python, no heavy imports: the Dagster code server imports this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path


CHUNK_BYTES = 1 << 20  # files are streamed: checkpoints and packed blocks run to gigabytes
VERSION_HEX_DIGITS = 16  # data versions: short enough to read in the UI, long enough never to collide


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK_BYTES), b"")


def _named_sha256(parts: Iterable[tuple[str, Iterable[bytes]]]) -> str:
    """Full sha256 hex over each part's name followed by its bytes, in the order given."""
    digest = hashlib.sha256()
    for name, chunks in parts:
        digest.update(name.encode())
        for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Full sha256 hex of one file's bytes (no name mixed in), as `sha256sum` prints it.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    for chunk in _file_chunks(Path(path)):
        digest.update(chunk)
    return digest.hexdigest()


def content_digest(paths: Iterable[str | Path]) -> str:
    """Data version of files: sha256 (16 hex) over each file's name and bytes, in sorted path order.

    Only the base name is hashed, so the same files give the same version wherever they live;
    the order is the full paths' order.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a").write_bytes(b"1"); _ = (d / "b").write_bytes(b"2")
    >>> content_digest([d / "b", d / "a"]) == content_digest([d / "a", d / "b"])
    True
    >>> len(content_digest([d / "a"]))
    16
    """
    ordered = sorted(Path(p) for p in paths)
    return _named_sha256((path.name, _file_chunks(path)) for path in ordered)[:VERSION_HEX_DIGITS]


def directory_digest(folder: str | Path, *, pattern: str = "*") -> str:
    """`content_digest` of the regular files directly in `folder` whose names match `pattern`.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "w.safetensors").write_bytes(b"w"); _ = (d / "x.json").write_text("{}")
    >>> directory_digest(d, pattern="*.safetensors") == content_digest([d / "w.safetensors"])
    True
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"directory_digest: {folder} is not a directory")
    return content_digest(p for p in folder.glob(pattern) if p.is_file())

