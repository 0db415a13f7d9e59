"""What a run prints, and where the rest goes.

The terminal gets pathfm's log lines and one line per library message; tracebacks (orbax,
TensorStore, asyncio callbacks that fire after a failed read) go to `<workdir>/pathfm.log`
only, which holds every record of every run on that workdir. `--verbose` prints them as well.
A failure ends with one line (`failure_message`): what went wrong, what to do, and where the
traceback is.
"""

from __future__ import annotations

import datetime
import errno
import logging
import logging.handlers
import os
import sys
import tempfile
import traceback
from pathlib import Path

from pathfm.errors import PathfmError

LOG_FILE = "pathfm.log"
FORMAT = "%(asctime)s %(name)s: %(message)s"
_QUIET_LIBRARIES = ("absl", "orbax", "jax._src")
log = logging.getLogger(__name__)
_installed: list[logging.Handler] = []  # the handlers the newest Console added to the root


class TerminalFormatter(logging.Formatter):
    """pathfm's records as they are; a library's as its first line, without a traceback."""

    def __init__(self, verbose: bool):
        super().__init__(FORMAT)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return super().format(record)
        message = record.getMessage()
        if not record.name.startswith("pathfm"):
            lines = message.strip().splitlines() or [""]
            message = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        return f"{self.formatTime(record)} {record.name}: {message}"


class CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is when a record comes (pytest, notebooks
    and `contextlib.redirect_stderr` swap it; a handler bound at start would write to a closed
    stream)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class Console:
    """Sets up logging for one command: the terminal, and a log file once the workdir is known.

    Records before then are held in memory and written to the log file when it opens (or to a
    temporary file if the command fails before it has one)."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.log_path: Path | None = None
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        # a previous command's handlers in this process (tests, notebooks), and the plain stderr
        # handler absl installs with logging.basicConfig() when a library logs first
        plain = [h for h in root.handlers if type(h) is logging.StreamHandler]
        for handler in [*_installed, *plain]:
            root.removeHandler(handler)
            if handler in _installed:
                handler.close()
        _installed.clear()
        self.terminal = CurrentStderr()
        self.terminal.setLevel(logging.INFO)
        self.terminal.setFormatter(TerminalFormatter(verbose))
        self.held = logging.handlers.MemoryHandler(
            capacity=1_000_000, flushLevel=logging.CRITICAL + 1
        )
        self.held.setLevel(logging.DEBUG)
        _installed.extend([self.terminal, self.held])
        for handler in _installed:
            root.addHandler(handler)
        logging.getLogger("pathfm").setLevel(logging.DEBUG)  # debug details reach the file only
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.captureWarnings(True)
        sys.unraisablehook = self._unraisable

    def _unraisable(self, info) -> None:
        """Exceptions raised where nothing can catch them (e.g. TensorStore callbacks into a
        closed asyncio loop after a failed read): to the log file, and the terminal if verbose."""
        text = "".join(
            traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback)
        )
        log.debug("%s: %s", info.err_msg or "ignored", text)
        if self.verbose:
            sys.__unraisablehook__(info)

    def open_log(self, path: str | Path, command: str = "") -> Path:
        """Writes every record from now on (and those held so far) to `path` (appended)."""
        path = Path(path)
        file = logging.FileHandler(path, mode="a", encoding="utf-8")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter(FORMAT))
        started = datetime.datetime.now().isoformat(timespec="seconds")
        file.stream.write(f"---- pathfm {started}: {command}\n")
        root = logging.getLogger()
        self.held.setTarget(file)
        self.held.flush()
        root.removeHandler(self.held)
        root.addHandler(file)
        _installed.remove(self.held)
        _installed.append(file)
        self.log_path = path
        return path

    def ensure_log(self, command: str = "") -> Path:
        """The log file, opening a temporary one if the command has none yet."""
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="pathfm-", suffix=".log")
            os.close(fd)
            self.open_log(name, command)
        return self.log_path

    def failure(self, error: BaseException, command: str = "") -> tuple[str, int]:
        """(one-line message, exit code) for `error`; its traceback goes to the log file."""
        log.debug("failed", exc_info=error)
        message, code = failure_message(error)
        if code == 2:  # the user's to fix: the line says what to do
            return message, code
        log_path = self.ensure_log(command)
        hint = "printed above" if self.verbose else f"in {log_path} (--verbose prints it)"
        if self.verbose:
            traceback.print_exception(error)
        return f"{message}; the full traceback is {hint}", code


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def failure_message(error: BaseException) -> tuple[str, int]:
    """(one line, exit code): 2 for what the user can fix (config, data, files, disk), 1 for
    anything else (a bug to report)."""
    if isinstance(error, PathfmError):
        return str(error), error.exit_code
    chain = _chain(error)
    os_errors = [e for e in chain if isinstance(e, OSError)]
    texts = " ".join(str(e) for e in chain)
    if any(e.errno == errno.ENOSPC for e in os_errors) or any(
        marker in texts for marker in ("No space left on device", "RESOURCE_EXHAUSTED")
    ):
        where = next((e.filename for e in os_errors if e.filename), None)
        return (
            f"no space left on the device{f' writing {where}' if where else ''} "
            f"({_first_line(chain[-1])}). Checkpoints saved before are kept: free space, then "
            "rerun the same command to resume",
            2,
        )
    if os_errors:
        e = os_errors[-1]
        what = f"{e.filename}: " if e.filename else ""
        reason = e.strerror or _first_line(e)
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            advice = "pass a writable --workdir (or fix the folder's permissions)"
        elif e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
            advice = "check the path"
        else:
            advice = "check the file system, then rerun the same command to resume"
        return f"{what}{reason}; {advice}", 2
    return f"unexpected error: {type(error).__name__}: {_first_line(error)}", 1
