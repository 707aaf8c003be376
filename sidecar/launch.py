"""The console scripts ``ztr`` and ``ztr-run``: the cyclic garbage collector is paused before the
rest of ztr is imported.

Start-up creates a few hundred thousand objects that live until exit (modules, botocore's models
and client) and almost no garbage, yet the collector would walk them again and again: 74
collections and about 20 ms of a 300 ms start, measured (bench/RESULTS.md). Reference counting
still frees everything that is not a cycle. ``run --once`` and the one-shot commands never turn
it back on; ``watch`` and a supervising ``run`` do once their client exists (``startup.settle``).
"""

from __future__ import annotations

import gc
from typing import NoReturn


def ztr() -> NoReturn:
    gc.disable()
    from .cli import entry

    entry()


def ztr_run() -> NoReturn:
    gc.disable()
    from .cli import run_entry

    run_entry()
