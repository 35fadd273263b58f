"""Errors raised for bad user input.

Every input problem (unknown names, bad profiles, malformed traces, impossible
deployments) is raised as :class:`ConfigError` with a one-line message that names the
bad value and what is allowed. The CLI catches it, prints the line and exits non-zero
(no traceback unless ``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing input error; ``str(err)`` is one self-explanatory line."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
