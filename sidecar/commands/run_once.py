"""``ztr run --once``: load, write any outputs, then exec the command in ztr's place."""

from __future__ import annotations

import logging
import threading

from .. import logs
from ..config import Config
from ..environ import child_environment
from ..process import exec_replace, forbid_core_dumps
from ..signals import SignalInbox
from ..startup import check_pending_stop, first_load, log_disabled, make_loader, make_writers, write_all


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    forbid_core_dumps()  # no core file, and no /proc reader of the same user, gets the values
    if not config.enabled:
        log_disabled(config.disabled_reason)
        env = dict(config.parent_env)
    else:
        writers = make_writers(config)
        stop = threading.Event()
        snapshot = first_load(make_loader(config, stop=stop), redactor, inbox, stop)
        write_all(writers, snapshot.values)
        env = child_environment(config.parent_env, snapshot.values, config.command_args)
        check_pending_stop(inbox, stop)
    logging.shutdown()
    exec_replace(config.command_args, env)  # raises SpawnError (127 / 126)
    return 0  # not reached: exec replaced this process
