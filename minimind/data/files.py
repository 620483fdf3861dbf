"""Files that appear whole or not at all, where the course folder is, and where caches live (keyed by content)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; rename it onto `target` when the block succeeds, delete it
    when it fails. Readers see the old file or the new one, never half of one."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); the result keeps the old file's mode, or is readable by all
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(target, write) -> None:
    """Call write(tmp_path) and rename tmp_path onto target (see atomic_path)."""
    with atomic_path(target) as tmp:
        write(str(tmp))


def find_root(start: Path | None = None) -> Path:
    """The course folder (the one holding _toc.yml and notebooks/), found from the working directory
    upwards; the working directory itself when the package is used outside the course."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").exists() and (folder / "notebooks").is_dir():
            return folder
    return start


def cache_dir() -> Path:
    """Where token caches live: $MINIMIND_CACHE, else $XDG_CACHE_HOME/minimind, else ~/.cache/minimind (never
    beside the data, whose folder may be read-only or someone else's)."""
    if os.environ.get("MINIMIND_CACHE"):
        return Path(os.environ["MINIMIND_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minimind"


def content_key(path, blocks: int = 16, block_size: int = 1 << 16) -> str:
    """A fingerprint of a file's content, cheap at any size: its size, mtime and `blocks` sampled blocks
    (the first, the last and evenly between), hashed. Any edit changes the size, the mtime or both."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as fh:
        for i in range(blocks):
            fh.seek(max(0, stat.st_size - block_size) * i // max(1, blocks - 1))
            digest.update(fh.read(block_size))
    return digest.hexdigest()
