"""Tokenized chat data on disk: variable-length rows in flat, memory-mapped arrays, so that a dataset of any size
costs the same memory (the pages the loader touches), and the second run starts at once.

A table is a folder: per column `NAME.bin` (every row back to back) and `NAME.idx.npy` (row i is
data[idx[i]:idx[i + 1]]), plus `meta.json` (the counts). It is built once in a temporary folder beside its place
and renamed into it when complete, so a reader never sees half of one; an interrupted build leaves nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Optional

import numpy as np

TABLE_VERSION = 1  # bump when the layout or what goes in a row changes: old tables are rebuilt


class TableWriter:
    """Appends rows (1-D numpy arrays) to named columns, on disk (`folder`) or in memory (folder=None)."""

    def __init__(self, columns: dict[str, np.dtype], folder: Optional[Path] = None):
        self.dtypes = {name: np.dtype(dt) for name, dt in columns.items()}
        self.folder = folder
        self.offsets = {name: array("q", [0]) for name in columns}  # 8 bytes a row: small next to the rows
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in columns} if folder else None
        self.chunks: dict[str, list] = {name: [] for name in columns}

    def add_many(self, **rows) -> None:
        """Several rows per column (a list each), written in one piece."""
        for name, column in rows.items():
            if not column:
                continue
            lengths = np.fromiter((len(r) for r in column), np.int64, len(column))
            end = self.offsets[name][-1]
            self.offsets[name].extend((end + np.cumsum(lengths)).tolist())
            data = np.concatenate([np.asarray(r, dtype=self.dtypes[name]) for r in column])
            if self.files:
                data.tofile(self.files[name])
            else:
                self.chunks[name].append(data)

    def __len__(self) -> int:
        return len(next(iter(self.offsets.values()))) - 1

    def close(self, meta: dict) -> "TokenTable":
        columns = {}
        for name, dt in self.dtypes.items():
            idx = np.frombuffer(self.offsets[name], dtype=np.int64)
            if self.files:
                self.files[name].close()
                np.save(self.folder / f"{name}.idx.npy", idx)
            else:
                data = np.concatenate(self.chunks[name]) if self.chunks[name] else np.zeros(0, dt)
                columns[name] = (data, idx.copy())
        meta = {"version": TABLE_VERSION, "rows": len(self), "dtypes": {k: v.str for k, v in self.dtypes.items()},
                **meta}
        if self.files:
            (self.folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            return TokenTable(self.folder)
        return TokenTable(columns=columns, meta=meta)

    def abort(self) -> None:
        for fh in (self.files or {}).values():
            fh.close()


class TokenTable:
    """Read side: `table.row("input_ids", i)` is a numpy view of row i (memory-mapped when on disk)."""

    def __init__(self, folder: Optional[Path] = None, columns: Optional[dict] = None, meta: Optional[dict] = None):
        if folder is not None:
            folder = Path(folder)
            meta = json.loads((folder / "meta.json").read_text())
            columns = {}
            for name, dt in meta["dtypes"].items():
                idx = np.load(folder / f"{name}.idx.npy", mmap_mode="r")
                size = (folder / f"{name}.bin").stat().st_size
                # an empty file cannot be memory-mapped
                data = np.memmap(folder / f"{name}.bin", dtype=dt, mode="r") if size else np.zeros(0, dt)
                columns[name] = (data, idx)
        self.folder, self.columns, self.meta = folder, columns, meta

    def __len__(self) -> int:
        return self.meta["rows"]

    def row(self, column: str, i: int) -> np.ndarray:
        data, idx = self.columns[column]
        return data[idx[i]:idx[i + 1]]

    def lengths(self, column: str) -> np.ndarray:
        """Every row's length (rows,), without reading the rows."""
        return np.diff(np.asarray(self.columns[column][1]))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def build_table(folder: Optional[Path], columns: dict, fill) -> TokenTable:
    """fill(writer) -> meta writes the rows. On disk: built in a temporary folder beside `folder` and renamed
    into place when complete (an existing complete table is returned as it is); folder=None: in memory."""
    if folder is None:
        writer = TableWriter(columns)
        return writer.close(fill(writer))
    folder = Path(folder)
    if (folder / "meta.json").exists():
        table = TokenTable(folder)
        if table.meta.get("version") == TABLE_VERSION:
            return table
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    writer = TableWriter(columns, tmp)
    try:
        meta = fill(writer)
        writer.close(meta)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would lock other users of a shared cache out
        if folder.exists():  # a stale or half-written table from an older version: replace it
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same table first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenTable(folder)
