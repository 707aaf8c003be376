"""Pure: loaded secret values + the parent environment -> the child's environment."""

from __future__ import annotations

from collections.abc import Mapping

from .refs import URI_SCHEME


def child_environment(parent: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The parent environment with every ``sm://`` reference removed, then the secrets on top.

    A secret overrides an inherited variable of the same name (the seed's rule: the secret if
    available, otherwise the environment). An optional secret that is missing leaves an
    inherited plain variable alone; its ``sm://`` reference itself never reaches the child.
    """
    env = {name: value for name, value in parent.items() if not value.startswith(URI_SCHEME)}
    env.update(values)
    return env
