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
import shutil
import socket
from pathlib import Path

import jax

from pathfm.errors import PathfmError
from pathfm.runs.console import LOG_FILE, Console

LOCK_FILE = ".pathfm.lock"
# What a run writes before its first record that the next run makes again (the slide index only
# when it holds no prepared slide).
REGENERABLE = (LOCK_FILE, LOG_FILE, "synthetic_slides", "slide_index")
_held: dict[str, int] = {}  # workdir -> fd of this process's lock (kept open until exit)


class WorkdirBusy(PathfmError):
    """Another run holds the workdir."""


def lock_workdir(workdir: str | Path, command: str = "") -> None:
    """Take `workdir`'s lock for the rest of this process (creating the folder), or raise
    WorkdirBusy naming the holder. Calling it again for a held workdir does nothing."""
    workdir = Path(workdir).absolute()
    if str(workdir) in _held:
        return
    if workdir.exists() and not workdir.is_dir():
        raise PathfmError(f"--workdir {workdir} is a file, not a folder; pass a folder")
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


class RunWorkdir:
    """One command's workdir: taken (created, locked, logged to) only after validation passes.
    A run that fails before writing anything of its own removes the workdir it created, except
    a slide index holding prepared slides (the next run reuses them)."""

    def __init__(self, workdir: str | Path | None, console: Console, command: str = ""):
        self.path = Path(workdir) if workdir else None
        self.console, self.command = console, command
        self.created = False

    def own(self) -> None:
        """Create and lock the workdir (process 0 holds the lock for all) and log into it."""
        self.created = not self.path.exists()
        process = jax.process_index()
        if process == 0:
            lock_workdir(self.path, self.command)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        name = LOG_FILE if process == 0 else f"pathfm.process{process}.log"
        self.console.open_log(self.path / name, self.command)

    def discard_unstarted(self) -> None:
        """After a user error: remove the workdir if this run created it and wrote nothing in
        it that the next run would not make again."""
        if not self.created or jax.process_index() != 0 or not self.path.is_dir():
            return
        items = list(self.path.iterdir())
        if any(item.name not in REGENERABLE for item in items):
            return  # records, features or checkpoints: kept
        entries = self.path / "slide_index" / "entries"
        keep_index = entries.is_dir() and any(entries.iterdir())
        for item in items:
            if item.name == "slide_index" and keep_index:
                continue
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
        if not keep_index:
            shutil.rmtree(self.path, ignore_errors=True)
