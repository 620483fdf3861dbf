"""Files that appear whole or not at all, and where the course folder is."""
from __future__ import annotations

import contextlib
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
