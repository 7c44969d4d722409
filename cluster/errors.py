"""User-facing errors: one line that names the problem and the fix, never a traceback."""


class ReinforgeError(Exception):
    """An error the CLI prints as one line (``reinforge: error: ...``) with exit status 1."""

    exit_code = 1


class ConfigError(ReinforgeError):
    """Bad configuration or command-line input (exit status 2)."""

    exit_code = 2


class CheckpointError(ReinforgeError):
    """A checkpoint that is missing, truncated or corrupt."""


class ConnectError(ReinforgeError):
    """A Ray cluster that cannot be reached."""


class DivergedError(ReinforgeError):
    """A training loss, gradient or weight became NaN or infinite: the run stops, and no
    checkpoint of the non-finite state is saved."""
