"""Reading any data file record by record for `convert`: JSONL, a JSON array (streamed), Parquet, Arrow and a
folder saved with `datasets`. Each reader yields (where, record or None, problem or None): where is file:line or
file: row i, so that a bad record's error names it."""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Callable, Iterator, Optional

from .records import DataError

_BATCH = 1024  # rows read at a time from Parquet, Arrow and datasets folders
_CHUNK = 1 << 20  # bytes read at a time from a JSON array


class NeedsPackage(ImportError, ValueError):
    """An optional package a file type needs is not installed (a ValueError too: the CLI prints it plainly)."""


class _Bad(Exception):
    """One record's problem: (problem, fix)."""

    def __init__(self, problem: str, fix: Optional[str] = None):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _iter_jsonl(path: Path, update: Callable[[int], None]) -> Iterator[tuple]:
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            raise DataError(f"{path} is gzip-compressed: unpack it first (gunzip -k {path}) and pass the file")
        fh.seek(0)
        for lineno, raw in enumerate(fh, 1):
            update(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield f"{path}:{lineno}", None, _Bad(
                    f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)",
                    "re-encode the file as UTF-8 (e.g. iconv -f GBK -t UTF-8 in > out)")
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line), None
            except json.JSONDecodeError as err:
                yield f"{path}:{lineno}", None, _Bad(f"not valid JSON ({err.msg} at column {err.colno})",
                                                     "each line must hold exactly one JSON object")
            except RecursionError:
                yield f"{path}:{lineno}", None, _Bad("JSON nested too deeply to read", "one record per line")


def _iter_json(path: Path, update: Callable[[int], None]) -> Iterator[tuple]:
    """A JSON array, streamed: records are decoded one by one from a sliding buffer (memory: the largest record
    plus 1 MiB, not the file). A .json file holding JSONL (it starts with "{") is read as JSONL."""
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if head.startswith("{"):
        yield from _iter_jsonl(path, update)
        return
    if not head.startswith("["):
        raise DataError(f"{path}: not a JSON array of records (it starts with {head[:20]!r}); fix: a .json file "
                        "must hold [{...}, {...}] or one JSON object per line")
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        buf, pos, line, eof = "", 0, 1, False

        def more(size: int = _CHUNK) -> None:
            nonlocal buf, pos, eof
            raw = fh.read(size)
            update(len(raw))
            eof = not raw
            try:
                text = utf8.decode(raw, final=eof)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: invalid UTF-8 near line {line} ({err.reason}); fix: re-encode the "
                                "file as UTF-8 (e.g. iconv -f GBK -t UTF-8 in > out)") from None
            buf, pos = buf[pos:] + text, 0

        def skip_space() -> str:
            """The next non-space character ("" at the end of the file), counting lines."""
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                more()

        def broken(what: str) -> DataError:
            return DataError(f"{path}:{line}: {what}; fix: the file must be one JSON array of records "
                             "(a broken array cannot be skipped past: repair the file, or convert it to JSONL)")

        more()
        skip_space()
        pos += 1  # "["
        if skip_space() == "]":
            return
        while True:
            if not skip_space():
                raise broken("the array is not closed (the file ends early)")
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if eof:
                        raise broken(f"not valid JSON ({err.msg})") from None
                    more(max(_CHUNK, len(buf)))  # a record longer than the buffer: read more, doubling
                    continue
                except RecursionError:
                    raise broken("JSON nested too deeply to read") from None
                if end == len(buf) and not eof:  # a number or a literal may go on in the next chunk
                    more(max(_CHUNK, len(buf)))
                    continue
                break
            yield f"{path}:{line}", record, None
            line += buf.count("\n", pos, end)
            pos = end
            sep = skip_space()
            pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise broken(f"expected , or ] between records, found {sep!r}" if sep else "the array is not "
                             "closed (the file ends early)")


def _rows(table_batches, where: str, update: Callable[[int], None]) -> Iterator[tuple]:
    row = 0
    for batch in table_batches:
        for start in range(0, batch.num_rows, _BATCH):
            part = batch.slice(start, _BATCH).to_pylist()
            update(len(part))
            for record in part:
                yield f"{where}: row {row}", record, None
                row += 1


def _pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (loads the submodule)
    except ImportError:
        raise NeedsPackage(f"reading {path.name} needs pyarrow: pip install pyarrow") from None
    return pyarrow


def _open_source(path: Path) -> tuple[int, str, Callable]:
    """(total for a progress bar, its unit, records(update) -> iterator of (where, record, bad))."""
    if path.is_dir():
        return _open_hf_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pa = _pyarrow(path)
        try:
            pf = pa.parquet.ParquetFile(path)
        except pa.ArrowException as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        return pf.metadata.num_rows, "rows", lambda update: _rows(pf.iter_batches(batch_size=_BATCH), str(path),
                                                                   update)
    if suffix == ".arrow":
        pa = _pyarrow(path)

        def batches():
            source = pa.memory_map(str(path))
            try:
                reader = pa.ipc.open_stream(source)  # what datasets writes
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    reader = pa.ipc.open_file(source)
                except pa.ArrowInvalid as err:
                    raise DataError(f"{path}: not an Arrow IPC file or stream ({err})") from None
                yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                return
            yield from reader

        return 0, "rows", lambda update: _rows(batches(), str(path), update)
    size = path.stat().st_size
    reader = _iter_json if suffix == ".json" else _iter_jsonl
    return size, "B", lambda update: reader(path, update)


def _open_hf_folder(path: Path) -> tuple[int, str, Callable]:
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path} is a folder, but not a dataset saved with datasets' save_to_disk ({err}); fix: "
                        "pass that folder, or a .jsonl, .json, .parquet or .arrow file") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            splits = ", ".join(ds)
            raise DataError(f"{path} holds several splits ({splits}); fix: convert one at a time, e.g. "
                            f"{path / next(iter(ds))}")
        ds = next(iter(ds.values()))

    def records(update):
        columns = ds.column_names
        for start in range(0, len(ds), _BATCH):
            batch = ds[start:start + _BATCH]
            rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
            update(len(rows))
            for i, record in enumerate(rows):
                yield f"{path}: row {start + i}", record, None

    return len(ds), "rows", records


