"""The error a user can fix by changing the configuration, and the context manager that names the key."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException


class ConfigError(ValueError):
    """A configuration value a user can fix; the message starts with the config key, e.g. ``rate: ...``."""


@contextmanager
def config_key(key: str) -> Iterator[None]:
    """Re-raise a ValueError/TypeError from building an object as a :class:`ConfigError` naming ``key``.

    The components (policies, presets, workload loaders) already say what is wrong and what is valid; this adds
    which part of the configuration to change. Hydra's InstantiationException is unwrapped to its cause.
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, FileNotFoundError, InstantiationException) as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        if not isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise
        raise ConfigError(f"{key}: {cause}") from exc
