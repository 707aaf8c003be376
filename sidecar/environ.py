"""Pure: loaded secret values + the parent environment -> the child's environment, checked
against the kernel's limits for exec."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .errors import SecretValueError
from .refs import URI_SCHEME

MAX_ARG_STRLEN = 131072  # Linux: one "NAME=value" string passed to exec, at most 32 pages
_POINTER = 8  # each string also costs its pointer in the new process's argv/envp arrays


def arg_max() -> int:
    """What execve accepts for argv + envp together (Linux: a quarter of the stack limit)."""
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def child_environment(parent: Mapping[str, str], values: Mapping[str, str],
                      argv: Sequence[str] = (), *, limit: int | None = None) -> dict[str, str]:
    """The parent environment with every ``sm://`` reference removed, then the secrets on top.

    A secret overrides an inherited variable of the same name (the seed's rule: the secret if
    available, otherwise the environment). An optional secret that is missing leaves an
    inherited plain variable alone; its ``sm://`` reference itself never reaches the child.

    Raises SecretValueError (65) naming the variables when the environment could not reach an
    exec: one variable over the kernel's per-string limit, or argv + environment over its total
    limit. The kernel would refuse with E2BIG, which would read as the command's fault (126).
    """
    for name, value in values.items():
        size = len(name.encode()) + len(value.encode()) + 2
        if size > MAX_ARG_STRLEN:
            raise SecretValueError(
                f"{name}: {size} bytes, over the kernel's {MAX_ARG_STRLEN}-byte limit for one "
                "environment variable: read it from --output or --output-dir instead")
    env = {name: value for name, value in parent.items() if not value.startswith(URI_SCHEME)}
    env.update(values)
    sizes = {name: len(name.encode()) + len(value.encode()) + 2 + _POINTER
             for name, value in env.items()}
    total = sum(sizes.values()) + sum(len(arg.encode()) + 1 + _POINTER for arg in argv)
    allowed = arg_max() if limit is None else limit
    if total > allowed:
        largest = sorted((n for n in sizes if n in values), key=lambda n: -sizes[n])[:3]
        raise SecretValueError(
            f"the app's environment and arguments take {total} bytes, over the kernel's "
            f"{allowed}-byte limit for exec; largest secrets: {', '.join(largest) or 'none'}: "
            "read them from --output or --output-dir instead")
    return env
