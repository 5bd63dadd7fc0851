"""Resolving the image paths a data file names (every loader calls
:func:`resolve_image_path`)."""

from __future__ import annotations

import os

from ..errors import InputError


def resolve_image_path(value: str, base: str, where: object, confine: str | None = None) -> str:
    """The absolute path of the image file ``value`` names (relative to directory
    ``base``, or absolute); the file must exist.

    By default the path may lead anywhere (``../``, an absolute path, a symlink).
    ``confine`` (a directory; ``--strict-paths``) requires the file, symlinks resolved, to
    lie inside it: for data sets from untrusted sources. ``where`` names the file, row and
    field in errors."""
    path = os.path.abspath(os.path.join(base, value))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    if confine is not None:
        root, real = os.path.realpath(confine), os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise InputError(
                f"{where}: image path {value!r} leads outside the data directory {root} "
                f"(to {real}; refused by --strict-paths)"
            )
    return path
