"""One module per command, dispatched from a table: only the chosen module is imported, so each
command pays for what it uses (``run --once`` never imports the resident machinery)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..logs import Redactor
    from ..signals import SignalInbox


class Command(Protocol):
    def __call__(self, config: Config, redactor: Redactor, inbox: SignalInbox) -> int: ...


# command -> module under sidecar.commands, each with a ``main(config, redactor, inbox)``.
TABLE = {
    "init": "init",
    "watch": "watch",
    "run": "run",
    "check": "check",
    "iam-policy": "iam_policy",
    "plan": "plan",
    "demo": "demo",
}
# Commands that own signals for their whole life (the inbox); the others keep Python's defaults.
RESIDENT_SIGNALS = frozenset({"init", "watch", "run"})


def module_name(config: Config) -> str:
    if config.command == "run" and config.once:
        return "run_once"  # exec after loading: no supervisor, no metrics, no watcher
    return TABLE[config.command]


def dispatch(config: Config, redactor: Redactor, inbox: SignalInbox) -> int:
    module = importlib.import_module(f"{__name__}.{module_name(config)}")
    main: Command = module.main
    return main(config, redactor, inbox)
