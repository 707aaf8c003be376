"""``ztr init``: load the secrets once, write them to a file or directory, exit."""

from __future__ import annotations

import threading

from .. import logs
from ..config import Config
from ..process import forbid_core_dumps
from ..signals import SignalInbox
from ..startup import check_pending_stop, first_load, log_disabled, make_loader, make_writers, write_all


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    forbid_core_dumps()  # no core file, and no /proc reader of the same user, gets the values
    if not config.enabled:
        log_disabled(config.disabled_reason)
        return 0
    writers = make_writers(config)
    stop = threading.Event()
    snapshot = first_load(make_loader(config, stop=stop), redactor, inbox, stop)
    written = write_all(writers, snapshot.values)
    logs.info("Wrote secrets", outputs=[str(o) for o in (config.output, config.output_dir) if o],
              rewritten=bool(written), variables=snapshot.names)
    check_pending_stop(inbox, stop)  # the files are whole; the exit code still says "stopped"
    return 0
