"""Errors the ``cagul`` command reports as one line with exit status 2."""


class UsageError(ValueError):
    """A user's mistake (a bad path, config, data file or argument): the ``cagul`` command
    prints ``cagul <command>: error: <message>`` and exits with status 2, without a
    traceback. Raise it with a message that names the file, row, field or argument; every
    other exception is a bug and keeps its traceback."""
