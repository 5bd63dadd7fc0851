"""The exceptions that mean "the user gave bad input", not "the code has a bug"."""

from __future__ import annotations


class UsageError(Exception):
    """A user error: a bad path, flag, config or data file, named in the message.

    The ``cagul`` command prints ``cagul: error: <message>`` (one line, no traceback) and
    exits with status 2. Any other exception is a bug and keeps its traceback.
    """


class InputError(UsageError, ValueError):
    """A bad input file or value. A ``ValueError`` for library callers, a
    :class:`UsageError` for the command."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file an input needs is missing (e.g. part of a checkpoint). A
    ``FileNotFoundError`` for library callers, a :class:`UsageError` for the command."""
