"""Files that are whole or absent: write to a temporary file beside the target, then rename.

A reader (another process, a resumed run) sees the old file or the complete new one, never a
part; a failure or a kill leaves at most a hidden `.<name>.*.tmp` file, which is removed on
failure. The new file gets the usual permissions (0666 less the umask), not mkstemp's 0600, so
a shared cache or index stays readable by every user.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block ends
    without an error, removed otherwise. `suffix` ends the temporary name (e.g. ".png" for
    writers that choose the format by extension)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Writes `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
