"""Environment variables handed to the payload (``extra_env``): their names are checked once, here."""

from __future__ import annotations

import re
from collections.abc import Mapping

from dagster_slurm.errors import ConfigurationError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_names(env: Mapping[str, str], setting: str = "extra_env") -> dict[str, str]:
    """``env`` as a plain dict; a name a POSIX shell cannot export (``ÄPI``, ``1X``, ``A-B``) is an error,
    not a variable that silently vanishes in the job."""
    for key in env:
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ConfigurationError(
                f"{setting}: {key!r} is not a valid environment variable name. Use ASCII letters, digits "
                "and underscores, not starting with a digit ([A-Za-z_][A-Za-z0-9_]*)."
            )
    return {key: str(value) for key, value in env.items()}
