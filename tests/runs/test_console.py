"""One line per failure, the traceback in the log file, library noise off the terminal."""

import errno
import logging

from pathfm.errors import ConfigError
from pathfm.runs.console import Console, failure_message


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_failures_map_to_one_line_and_an_exit_code():
    assert failure_message(ConfigError("config.x: bad")) == ("config.x: bad", 2)
    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/12")
    line, code = failure_message(full)
    assert code == 2 and "no space left" in line and "/w/checkpoints/12" in line
    # orbax reports a full disk as a ValueError from TensorStore
    line, code = failure_message(ValueError("RESOURCE_EXHAUSTED: Failed writing ocdbt"))
    assert code == 2 and "rerun the same command to resume" in line
    line, code = failure_message(OSError(errno.EROFS, "Read-only file system", "/ro/run"))
    assert (line, code) == ("/ro/run: Read-only file system; pass a writable --workdir (or fix "
                            "the folder's permissions)", 2)  # fmt: skip
    line, code = failure_message(KeyError("bug"))
    assert code == 1 and line.startswith("unexpected error: KeyError")


def test_a_bug_names_its_traceback_file_and_library_tracebacks_stay_off_the_terminal(
    tmp_path, capsys
):
    console = Console()
    console.open_log(tmp_path / "pathfm.log", "cmd")
    logging.getLogger("orbax.fake").error("first line\nsecond line", exc_info=_raised(OSError()))
    line, code = console.failure(_raised(ZeroDivisionError("division by zero")), "cmd")
    assert code == 1 and str(tmp_path / "pathfm.log") in line and "--verbose" in line
    terminal = capsys.readouterr().err
    assert "first line ..." in terminal and "second line" not in terminal
    assert "Traceback" not in terminal
    log = (tmp_path / "pathfm.log").read_text()
    assert "second line" in log and "ZeroDivisionError" in log and log.count("Traceback") == 2
