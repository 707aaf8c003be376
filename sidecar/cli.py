"""Argument parsing, wiring, and error -> exit code. The only module that decides how ztr exits."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__, logs
from . import config as config_mod
from .config import SETTINGS, Config
from .errors import EXIT_SOFTWARE, ConfigError, InternalError, StartupInterruptedError, ZtrError
from .signals import SignalInbox

_SUMMARIES = {
    "init": "load the secrets once, write them to a file or directory, exit",
    "watch": "write the secrets, keep them current, serve metrics and health",
    "run": "start a command with the secrets in its environment and supervise it",
    "check": "check access to every declared secret without printing a value",
    "iam-policy": "print the least-privilege IAM policy the declared secrets need",
    "demo": "show ztr at work against an embedded Secrets Manager (no AWS account)",
    "plan": "API calls, quota use and monthly cost for a fleet",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (exit 64, one line) instead of printing usage + exit 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line, built from the settings table (each flag has its ZTR_* twin).

    ``only`` builds just that command's flags: the start-up path pays for one, not seven.
    """
    parser = _Parser(prog="ztr", description="Secrets from AWS Secrets Manager for containers.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ztr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in config_mod.COMMANDS:
        if only is not None and name != only:
            continue
        sub = commands.add_parser(name, help=_SUMMARIES[name], description=_SUMMARIES[name],
                                  allow_abbrev=False)
        for setting in SETTINGS:
            if name not in setting.commands:
                continue
            help_text = f"{setting.help} [{setting.env}]"
            if setting.switch:
                sub.add_argument(setting.flag, dest=setting.key, action="store_const",
                                 const="true", default=None, help=help_text)
            elif setting.repeat:
                sub.add_argument(setting.flag, dest=setting.key, action="append", default=None,
                                 metavar=setting.metavar, help=help_text)
            else:
                sub.add_argument(setting.flag, dest=setting.key, default=None,
                                 metavar=setting.metavar or setting.key.upper(), help=help_text)
        if name == "run":
            sub.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    return parser


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], list[str]]:
    """Split argv into the command, its flags (setting key -> raw value) and the app command."""
    argv = list(argv)
    app: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, app = argv[:cut], argv[cut + 1 :]
    wanted = argv[0] if argv and argv[0] in config_mod.COMMANDS else None
    namespace = build_parser(wanted).parse_args(argv)
    if namespace.command is None:
        raise ConfigError("ztr: a command is needed: " + ", ".join(config_mod.COMMANDS)
                          + " (see ztr --help)")
    flags = vars(namespace)
    command = flags.pop("command")
    app = list(flags.pop("command_args", None) or []) + app
    return command, flags, app


def main(argv: Sequence[str] | None = None) -> int:
    """``ztr``: returns the exit code (console script wrapper exits with it).

    Signals are recorded from the first moment: a SIGTERM during parsing is honoured once the
    command runs (or ends the process at once, for the commands that keep Python's defaults).
    """
    from . import commands

    args = list(sys.argv[1:] if argv is None else argv)
    inbox = SignalInbox().install()
    try:
        try:
            command, flags, app = parse(args)
            config = config_mod.load(command, flags, app)
        except ConfigError as exc:
            logs.setup(config_mod.early_log_format(args))
            logs.error(f"ztr: {exc}", exit_code=exc.exit_code, error=type(exc).__name__)
            return exc.exit_code
        redactor = logs.setup(config.log_format, config.log_level)
        if config.command not in commands.RESIDENT_SIGNALS:
            inbox.uninstall()
            for signum in inbox.take():  # arrived while parsing: act as the default would
                if signum in (2, 15):
                    return 128 + signum
        return commands.dispatch(config, redactor, inbox)
    except StartupInterruptedError as exc:
        logs.info(str(exc), signal=exc.signal_name)
        return exc.exit_code
    except ZtrError as exc:
        logs.error(str(exc), exit_code=exc.exit_code, error=type(exc).__name__)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`ztr plan | head`): say nothing more, as the shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        # Frames only (file, line, function): exception messages and locals may hold values.
        logs.error(f"internal error: {type(exc).__name__}", exit_code=EXIT_SOFTWARE,
                   where=_where(exc), error=InternalError.__name__)
        logs.debug("internal error frames", frames=[
            f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
            for frame in traceback.extract_tb(exc.__traceback__)])
        return EXIT_SOFTWARE
    finally:
        if inbox.installed:
            inbox.uninstall()
        inbox.close()


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unknown"
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"


def run_main(argv: Sequence[str] | None = None) -> int:
    """``ztr-run ...`` is ``ztr run ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["run", *args])


def _exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown (tens of ms of module and thread clean-up after ztr's
    work is done): outputs are already fsynced; flush logs and standard streams first."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def entry() -> NoReturn:
    _exit_now(main())


def run_entry() -> NoReturn:
    _exit_now(run_main())


def resolve_config(command: str, argv: Sequence[str], environ: dict[str, str]) -> Config:
    """Parse and resolve exactly as the CLI does (manifest checks use this)."""
    command_name, flags, app = parse([command, *argv])
    return config_mod.load(command_name, flags, app, environ=environ)
