"""The packed-block contract: what packing writes and what training and evaluation read.

A packed split is one Arrow IPC stream file (`train.arrow`, `validation.arrow`) with three columns,
each `list<int32>`, and every row of every column exactly `max_length` long:

- `input_ids`: the tokens, conversations back to back, filler (pad) at the end of the row;
- `labels`: the token's id where it is trained, `IGNORE_INDEX` (-100) elsewhere; never a target
  at a document start (that token would be predicted from the *previous* document);
- `position_ids`: restart at 0 at each document (and at the filler), which with
  `attention_mask=None` makes transformers build a block-diagonal mask (DESIGN.md, "Known traps").

Everything that writes, checks or reads blocks goes through this module: `record_batch` and
`arrow_schema` (writing), `blocks_problem` (the one validator: the Dagster check, and every reader
before use), `load_blocks` (memory-mapped `datasets.Dataset`), `load_block_arrays` (numpy, for
benchmarks), `collate_blocks` (a batch of rows -> tensors). pyarrow, datasets and torch are
imported inside the functions: the Dagster code server imports this module's callers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from datasets import Dataset

BLOCK_COLUMNS = ("input_ids", "labels", "position_ids")
BLOCK_DTYPE = np.int32  # on disk; collate_blocks widens to int64, which embedding lookups and losses want
IGNORE_INDEX = -100  # a label the loss skips (torch's cross_entropy default ignore_index)


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a packed split: each column a list of int32."""
    import pyarrow as pa

    return pa.schema([(name, pa.list_(pa.from_numpy_dtype(BLOCK_DTYPE))) for name in BLOCK_COLUMNS])


def record_batch(arrays: Mapping[str, np.ndarray]) -> pa.RecordBatch:
    """(n_blocks, max_length) int32 arrays per column -> one record batch of `arrow_schema()`.

    >>> ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    >>> batch = record_batch({"input_ids": ids, "labels": ids, "position_ids": ids % 3})
    >>> batch.num_rows, batch.column("labels").to_pylist()
    (2, [[0, 1, 2], [3, 4, 5]])
    """
    import pyarrow as pa

    missing = [name for name in BLOCK_COLUMNS if name not in arrays]
    if missing:
        raise ValueError(f"record_batch: missing column(s) {missing}; got {sorted(arrays)}")
    shape = arrays[BLOCK_COLUMNS[0]].shape
    for name in BLOCK_COLUMNS:
        array = arrays[name]
        if array.ndim != 2 or array.shape != shape or array.dtype != BLOCK_DTYPE:
            raise ValueError(f"record_batch: column {name} is {array.dtype} {array.shape}; every column "
                             f"must be {np.dtype(BLOCK_DTYPE)} of one shape (n_blocks, max_length), here {shape}")
    n_blocks, max_length = shape
    offsets = pa.array(np.arange(0, (n_blocks + 1) * max_length, max_length, dtype=np.int32))
    columns = [pa.ListArray.from_arrays(offsets, pa.array(arrays[name].reshape(-1))) for name in BLOCK_COLUMNS]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema())


def rows_problem(
    arrays: Mapping[str, np.ndarray], *, vocab_size: int | None = None, first_row: int = 0
) -> str | None:
    """What breaks the contract in (n_blocks, max_length) arrays, or None (row numbers from `first_row`).

    >>> ids = np.array([[5, 6, 7, 8]], dtype=np.int32)
    >>> ok = {"input_ids": ids, "labels": np.array([[-100, 6, -100, 8]]), "position_ids": np.array([[0, 1, 0, 1]])}
    >>> rows_problem(ok, vocab_size=9) is None
    True
    >>> rows_problem({**ok, "labels": np.array([[-100, 6, 7, 8]])})
    'row 0, token 2: a document start (position 0) is a target (label 7)'
    >>> rows_problem({**ok, "position_ids": np.array([[0, 1, 3, 4]])})
    'row 0, token 2: position id 3 neither restarts at 0 nor follows 1'
    >>> rows_problem(ok, vocab_size=8, first_row=10)
    'row 10, token 3: token id 8 is outside the vocabulary (size 8)'
    """
    ids, labels, positions = (np.asarray(arrays[name]) for name in BLOCK_COLUMNS)
    # Each position id is 0 (a document starts) or the previous one + 1; a row always starts a document.
    counts_on = np.zeros(positions.shape, dtype=bool)
    counts_on[:, 1:] = positions[:, 1:] == positions[:, :-1] + 1
    out_of_vocab = ids < 0 if vocab_size is None else (ids < 0) | (ids >= vocab_size)
    checks = (
        (out_of_vocab, lambda r, t: f"token id {ids[r, t]} is outside the vocabulary (size {vocab_size})"),
        ((labels != IGNORE_INDEX) & (labels != ids),
         lambda r, t: f"label {labels[r, t]} is neither {IGNORE_INDEX} nor the token id {ids[r, t]}"),
        ((positions != 0) & ~counts_on,
         lambda r, t: (f"position id {positions[r, t]} neither restarts at 0 nor follows {positions[r, t - 1]}"
                       if t else f"position ids start at {positions[r, 0]}, not 0")),
        ((positions == 0) & (labels != IGNORE_INDEX),
         lambda r, t: f"a document start (position 0) is a target (label {labels[r, t]})"),
    )
    for bad, describe in checks:
        if bad.any():
            row, token = (int(i) for i in np.argwhere(bad)[0])
            return f"row {first_row + row}, token {token}: {describe(row, token)}"
    return None


def blocks_problem(path: str | Path, *, max_length: int, vocab_size: int | None = None) -> str | None:
    """Why the packed split at `path` breaks the contract, or None: the one validator.

    Checks the schema, that there is at least one block, that every row of every column is exactly
    `max_length` long, `rows_problem` on every row, and that some token is trained. Streams the
    memory-mapped file one record batch at a time, so a split of any size is checked in bounded memory.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file"
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            problem = _schema_problem(reader.schema)
            if problem is not None:
                return f"{path}: {problem}"
            rows = trained = 0
            for batch in reader:
                arrays = {}
                for name in BLOCK_COLUMNS:
                    column = batch.column(name)
                    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
                    if len(lengths) and (lengths != max_length).any():
                        row = int(np.argmax(lengths != max_length))
                        return (f"{path}: row {rows + row} of {name} has {lengths[row]} tokens, "
                                f"max_length is {max_length}")
                    arrays[name] = column.flatten().to_numpy().reshape(-1, max_length)
                problem = rows_problem(arrays, vocab_size=vocab_size, first_row=rows)
                if problem is not None:
                    return f"{path}: {problem}"
                rows += batch.num_rows
                trained += int((arrays["labels"] != IGNORE_INDEX).sum())
    except (pa.ArrowInvalid, OSError) as error:
        return f"{path}: not a readable Arrow IPC stream ({error})"
    if rows == 0:
        return f"{path}: no blocks"
    if trained == 0:
        return f"{path}: no trained token (every label is {IGNORE_INDEX}): the loss mask masks everything"
    return None


def _schema_problem(schema: pa.Schema) -> str | None:
    expected = arrow_schema()
    missing = [name for name in BLOCK_COLUMNS if name not in schema.names]
    if missing:
        return f"missing column(s) {missing}; has {schema.names}"
    for name in BLOCK_COLUMNS:
        if schema.field(name).type != expected.field(name).type:
            return f"column {name} is {schema.field(name).type}, expected {expected.field(name).type}"
    return None


def load_blocks(path: str | Path, *, max_length: int, vocab_size: int) -> Dataset:
    """The packed split at `path`, validated (`blocks_problem`), memory-mapped, contract columns only."""
    from datasets import Dataset

    if not Path(path).is_file():
        raise FileNotFoundError(f"packed blocks not found: {path}")
    problem = blocks_problem(path, max_length=max_length, vocab_size=vocab_size)
    if problem is not None:
        raise ValueError(f"packed blocks do not match the contract: {problem}")
    return Dataset.from_file(str(path)).select_columns(list(BLOCK_COLUMNS))


def block_length(path: str | Path) -> int:
    """The length of the first block of the packed split at `path` (every block must have it).

    For readers that were not told the split's `max_length` (evaluation gets a path, not the packing
    config); `load_blocks` then checks every other row against it.
    """
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            if batch.num_rows:
                return int(batch.column(BLOCK_COLUMNS[0]).value_lengths()[0].as_py())
    raise ValueError(f"{path}: no blocks")


def load_block_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """A whole packed split as (n_blocks, max_length) int32 arrays, one per column, unvalidated.

    Everything is read into memory: for benchmarks and small splits (training uses `load_blocks`).
    """
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    max_length = len(table.column(BLOCK_COLUMNS[0])[0]) if table.num_rows else 0
    # np.array copies: the arrays outlive the memory map.
    return {name: np.array(table.column(name).combine_chunks().flatten(), dtype=BLOCK_DTYPE).reshape(-1, max_length)
            for name in BLOCK_COLUMNS}


def block_column(row: Mapping[str, Sequence[int]], name: str) -> Sequence[int]:
    """One column of one block (a dict-like row), with an error that names a missing column.

    >>> block_column({"input_ids": [1, 2]}, "input_ids")
    [1, 2]
    >>> block_column({"input_ids": [1, 2]}, "labels")
    Traceback (most recent call last):
    ...
    ValueError: packed block is missing column 'labels' (has ['input_ids'])
    """
    try:
        return row[name]
    except KeyError:
        raise ValueError(f"packed block is missing column {name!r} (has {sorted(row)})") from None


def collate_blocks(rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Stack equal-length blocks into int64 tensors, one per contract column.

    No attention_mask on purpose: position_ids restart at each document, and with
    attention_mask=None transformers builds the block-diagonal mask.
    """
    import torch

    return {name: torch.tensor([block_column(row, name) for row in rows], dtype=torch.long)
            for name in BLOCK_COLUMNS}
