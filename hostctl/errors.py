"""Errors a user sees as one clear line (the CLI exits with status 2, no traceback)."""

from __future__ import annotations


class HostctlError(Exception):
    """A refusal or failure that names the thing and the value at fault."""


class ConfigError(HostctlError):
    """A configuration file is malformed: the message names the file, field and value."""


class ScaleRefused(HostctlError):
    """A scale request was refused; nothing changed. `current` is the count found."""

    def __init__(self, message: str, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current
