"""User-facing errors: one clear message that names the thing and says what to do."""


class PathfmError(Exception):
    """An error the user can fix (bad config, missing slide, unreadable file, wrong checkpoint)."""


class ConfigError(PathfmError):
    """A configuration key or value is invalid."""


class DataError(PathfmError):
    """Input data (slides, manifests, data sets) is missing or unusable."""
