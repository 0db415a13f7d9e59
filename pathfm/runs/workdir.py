"""A workdir belongs to one run: an exclusive OS lock on `<workdir>/.pathfm.lock`.

The lock is `fcntl.flock`, which the OS drops when its process ends in any way (exit, crash,
`kill -9`), so a stale lock never needs cleaning up. The file says who holds it (host, pid, start
time), so a second run on the same workdir stops at once naming the first. In a multi-process run
process 0 holds it for all.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from pathfm.errors import PathfmError

LOCK_FILE = ".pathfm.lock"
_held: dict[str, int] = {}  # workdir -> fd of this process's lock (kept open until exit)


class WorkdirBusy(PathfmError):
    """Another run holds the workdir."""


def lock_workdir(workdir: str | Path, command: str = "") -> None:
    """Take `workdir`'s lock for the rest of this process (creating the folder), or raise
    WorkdirBusy naming the holder. Calling it again for a held workdir does nothing."""
    workdir = Path(workdir).absolute()
    if str(workdir) in _held:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirBusy(
            f"workdir {workdir} is in use by another pathfm run ({holder}); wait for it to "
            "finish or stop it, or pass another --workdir"
        ) from None
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _held[str(workdir)] = fd


def _read_holder(fd: int) -> str:
    """'pid P on host H since T' from a lock file, or what is known."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
