"""Pure: loaded secret values + the parent environment -> the child's environment."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import SecretValueError
from .refs import URI_SCHEME

MAX_ARG_STRLEN = 131072  # Linux: one "NAME=value" string passed to exec, at most 32 pages


def child_environment(parent: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The parent environment with every ``sm://`` reference removed, then the secrets on top.

    A secret overrides an inherited variable of the same name (the seed's rule: the secret if
    available, otherwise the environment). An optional secret that is missing leaves an
    inherited plain variable alone; its ``sm://`` reference itself never reaches the child.

    Raises SecretValueError (65) naming a variable too large for any exec: the kernel would
    refuse it with E2BIG, which would read as the command's fault.
    """
    for name, value in values.items():
        size = len(name.encode()) + len(value.encode()) + 2
        if size > MAX_ARG_STRLEN:
            raise SecretValueError(
                f"{name}: {size} bytes, over the kernel's {MAX_ARG_STRLEN}-byte limit for one "
                "environment variable: read it from --output or --output-dir instead")
    env = {name: value for name, value in parent.items() if not value.startswith(URI_SCHEME)}
    env.update(values)
    return env
