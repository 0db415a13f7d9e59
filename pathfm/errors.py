"""User-facing errors: one clear message that names the thing and says what to do."""


class PathfmError(Exception):
    """An error the user can fix (bad config, missing slide, unreadable file, wrong checkpoint)."""

    exit_code = 2


class ConfigError(PathfmError):
    """A configuration key or value is invalid."""


class DataError(PathfmError):
    """Input data (slides, manifests, data sets) is missing or unusable."""


class TrainingStopped(PathfmError):
    """Training met something it must not continue past (e.g. a non-finite loss); the last good
    checkpoint is kept."""

    exit_code = 3


def require(ok: bool, key: str, message: str) -> None:
    """ConfigError `config.<key>: <message>` unless `ok`: each subsystem checks its config keys
    with it before any work."""
    if not ok:
        raise ConfigError(f"config.{key}: {message}")
