"""Run as a script (a fresh interpreter each time): time the phases of ``ztr-run --once`` or of
the hand-written boto3 script, print them as JSON on stdout, then exec ``true`` as they do.

    python bench/_phases.py ztr|boto3 [--patch-loader] [--one-subparser]

(bench/why.py also runs it with AWS_DATA_PATH pointing at a pruned endpoints.json.)

--patch-loader   botocore's Loader.list_available_services answers for the one service asked
                 instead of scanning every service directory (what a ztr fix could do)
--one-subparser  build the argument parser for ``run`` only instead of all seven commands

It runs ``sidecar.cli.main`` for ``run --once`` (collector paused, as ``sidecar.launch`` does)
with the phase functions of ``sidecar.startup`` wrapped by timing marks, so the phases add up to
what ztr does; it changes nothing in sidecar/ (the patches live only in this process).
"""

from __future__ import annotations

import time
from typing import Any

T0 = time.perf_counter()
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

PHASES: list[tuple[str, float]] = []
_last = T0


def mark(name: str) -> None:
    global _last
    now = time.perf_counter()
    PHASES.append((name, (now - _last) * 1000))
    _last = now


def patch_loader() -> None:
    import botocore.loaders

    original = botocore.loaders.Loader.list_available_services

    def known(self: Any, type_name: str) -> list[str]:
        # Answer from the directory of the one service this process uses; fall back to the scan.
        for path in self._potential_locations():
            if os.path.isdir(os.path.join(path, "secretsmanager")):
                return ["secretsmanager"]
        return list(original(self, type_name))

    botocore.loaders.Loader.list_available_services = known  # type: ignore[method-assign]


def one_subparser(cli: object) -> None:
    import argparse

    from sidecar.config import SETTINGS

    def build() -> Any:
        parser = cli._Parser(prog="ztr", allow_abbrev=False)  # type: ignore[attr-defined]
        commands = parser.add_subparsers(dest="command", parser_class=cli._Parser)  # type: ignore[attr-defined]
        sub = commands.add_parser("run", allow_abbrev=False)
        for setting in SETTINGS:
            if "run" not in setting.commands:
                continue
            if setting.switch:
                sub.add_argument(setting.flag, dest=setting.key, action="store_const", const="true",
                                 default=None, help=setting.help)
            elif setting.repeat:
                sub.add_argument(setting.flag, dest=setting.key, action="append", default=None,
                                 help=setting.help)
            else:
                sub.add_argument(setting.flag, dest=setting.key, default=None, help=setting.help)
        sub.add_argument("command_args", nargs=argparse.REMAINDER)
        return parser

    cli.build_parser = build  # type: ignore[attr-defined]


def _timed(module: Any, name: str, label: str) -> None:
    """Wrap ``module.name`` so that a phase mark follows it."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        mark(label)
        return result

    setattr(module, name, wrapper)


class _ExecError(BaseException):
    """Stands for the exec: a BaseException, so cli.main's catch-all cannot turn it into exit 70."""


def ztr(flags: set[str]) -> None:
    """Run the real ``ztr run --once`` through ``cli.main``: the phases are the command's own
    functions, wrapped with marks (nothing here knows their order)."""
    import gc

    gc.disable()  # as the console script does first (sidecar.launch)
    from sidecar import cli, process, startup
    mark("import sidecar.cli, startup, process (config, refs, logs, loader, source, outputs)")
    if "--one-subparser" in flags:
        one_subparser(cli)
    if "--patch-loader" in flags:
        patch_loader()
    _timed(cli, "parse", "parse argv")
    _timed(cli.config_mod, "load", "config.load")
    _timed(startup, "make_writers", "make_writers")
    _timed(startup, "make_loader", "botocore session + create_client")
    _timed(startup, "first_load", "BatchGetSecretValue (1 call) + log lines")
    _timed(startup, "write_all", "write outputs")

    def exec_replace(argv: Any, env: Any) -> None:
        process.resolve_command(argv[0], env)
        mark("child env, resolve command")
        raise _ExecError

    process.exec_replace = exec_replace
    os.environ.setdefault("ZTR_LOG_FORMAT", "json")
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        code = cli.main(["run", "--once", "--preset", "zero-to-running", "--", "true"])
    except _ExecError:
        return
    finally:
        os.dup2(stderr, 2)
    raise SystemExit(f"ztr run --once exited {code} before its exec: the phases are incomplete")


def boto3_script(flags: set[str]) -> None:
    import boto3
    mark("import boto3")
    if "--patch-loader" in flags:
        patch_loader()
    client = boto3.client("secretsmanager")
    mark("boto3 session + client")
    ids = [f"production/zero-to-running/{n}"
           for n in ("database-password", "session-secret", "redis-password", "jwt-secret")]
    client.batch_get_secret_value(SecretIdList=ids)
    mark("BatchGetSecretValue (1 call)")


def main() -> None:
    mode, flags = sys.argv[1], set(sys.argv[2:])
    mark("script start (json, os, sys)")
    ztr(flags) if mode == "ztr" else boto3_script(flags)
    print(json.dumps({"phases": PHASES, "in_script_ms": (time.perf_counter() - T0) * 1000}),
          flush=True)
    os.execv("/bin/true", ["true"])


if __name__ == "__main__":
    main()
