"""Checkpoint integrity: a sha256 manifest written at save, verified before anything loads it.

A checkpoint can be damaged without anyone noticing: a node dies mid-write, a disk fills, a
shared filesystem returns a short file. Loading it then fails deep inside safetensors/torch with
an unhelpful message — or, worse, resumes from garbage. So every checkpoint folder gets a
`checkpoint_manifest.json` (size + sha256 per file), and every reader verifies first:

- safetensors files: the header must parse and its tensors must fit in the file (catches
  truncation even where no manifest exists, e.g. checkpoints written by an older version);
- every file in the manifest: present, same size, same sha256 (catches corruption).

Files that are not in the manifest (a planted `pytorch_model.bin`, say) are ignored here; loaders
use safetensors only and never unpickle them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from exp1_assets.hashing import file_sha256

MANIFEST_NAME = "checkpoint_manifest.json"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: a larger header means a corrupt file


def write_manifest(folder: str | Path) -> Path:
    """Record size and sha256 of every regular file under `folder` (written last, atomically).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("hi")
    >>> json.loads(write_manifest(d).read_text())["files"]["a.txt"]["size"]
    2
    >>> verify_checkpoint(d) is None
    True
    """
    folder = Path(folder)
    # Recursive: a sharded (FSDP) checkpoint keeps each rank's shards in subfolders.
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MANIFEST_NAME, f".{MANIFEST_NAME}.tmp")}
    manifest = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    tmp.replace(manifest)  # a reader never sees half a manifest
    return manifest


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or None. Reads only the header.

    Layout: 8-byte little-endian header length, a JSON header mapping tensor names to
    `data_offsets`, then the data; the largest end offset must equal the data's length.
    """
    size = path.stat().st_size
    if size < 8:
        return f"{path}: truncated ({size} bytes, shorter than the safetensors header)"
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            return f"{path}: corrupt safetensors header (claims {header_len} bytes, file has {size})"
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path}: corrupt safetensors header (not JSON)"
    if not isinstance(header, dict):
        return f"{path}: corrupt safetensors header (not an object)"
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        return f"{path}: truncated or padded ({size} bytes, the header describes {expected})"
    return None


def verify_checkpoint(folder: str | Path) -> str | None:
    """None if `folder` looks intact, else a sentence naming the first bad file and why."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: not a directory"
    weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            return problem
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        if not weights:  # e.g. the save died (disk full, kill) before the weights were written
            return f"{folder}: no {MANIFEST_NAME} and no *.safetensors weights (an unfinished save)"
        return None  # an older checkpoint: the header checks above are all we can do
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{manifest}: unreadable manifest"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing (listed in {MANIFEST_NAME})"
        if path.stat().st_size != expected["size"]:
            return f"{path}: size {path.stat().st_size} differs from the recorded {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{path}: sha256 differs from the one recorded at save (corrupted)"
    return None
