"""Bad input, generated where it can be: every setting in ``sidecar.config.SETTINGS`` with bad
values through its flag, its ZTR_* variable and a TOML file (wrong types); references of every
malformed shape through each way of declaring a secret; TOML files of the wrong shape; name
collisions. Each must end in exit 64 with exactly one line on stderr that names the flag,
variable or key. Secret values that do not fit (not JSON, NUL bytes, not UTF-8, colliding
names) end in their documented code with one JSON error record; 64 KiB values work.

Configuration cases run ``sidecar.cli.main`` in process (hundreds of cases in well under a
second) with ``commands.dispatch`` replaced by a tripwire: a bad value that gets past the
configuration fails its case instead of reaching AWS. A sample of them, and every secret-value
case, runs through the installed console scripts as subprocesses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import cli
from sidecar import commands as commands_mod
from sidecar.config import SETTINGS, Setting
from tests.helpers.ztr import ZTR_RUN, run
from tests.reliability.conftest import config_error_line, error_record

DEAD_ENDPOINT = "http://127.0.0.1:9"  # discard: nothing answers, should a bad value get through
PREFERRED_COMMANDS = ("init", "watch", "run", "plan", "check", "iam-policy", "demo")
BASE: dict[str, dict[str, str]] = {
    "init": {"output": "/dev/shm/ztr-rel-never-written/app.env", "secret": "BASE=rel/base"},
    "watch": {"output": "/dev/shm/ztr-rel-never-written/app.env", "secret": "BASE=rel/base",
              "metrics_addr": "off"},
    "run": {"secret": "BASE=rel/base", "metrics_addr": "off"},
    "check": {"secret": "BASE=rel/base"},
    "iam-policy": {"secret": "BASE=rel/base"},
    "plan": {},
    "demo": {},
}
EXTRA_BASE = {"environment": {"preset": "zero-to-running"}}  # the environment only names preset secrets

# Bad values by parser, then by key. "" is tried through flags only: a blank variable counts as
# unset (documented), so the same value through a variable is not an error.
BY_PARSER: dict[str, list[str]] = {
    "parse_duration": ["soon", "-5s", "5 minutes", "1e3", "1h30m"],
    "parse_bool": ["maybe", "2", "yes please"],
    "parse_int": ["many", "-1", "1.5", "0x10"],
    "parse_mode": ["rw-------", "0999", "77777", "-600"],
    "parse_owner": ["root", "1000:staff", "-1", "1000:"],
    "parse_signal": ["SIGNOPE", "999", "-9"],
    "parse_addr": ["nowhere", "127.0.0.1:99999", "host:port", "127.0.0.1:"],
    "parse_on_change": ["reboot", "signal:", "signal:SIGNOPE", "exit:now", "none:SIGHUP"],
    "parse_topic_arn": ["my-topic", "arn:aws:sqs:us-east-1:123456789012:q",
                        "arn:aws:sns:us-east-1:12345:t", "arn:aws:sns:us-east-1:123456789012:"],
    "parse_queue_url": ["my-queue", "sqs.us-east-1.amazonaws.com/123456789012/q",
                        "https://sqs.us-east-1.amazonaws.com/q", "ftp://h/123456789012/q"],
    "parse": ["bogus", "-"],  # _choice(...)
    "parse_text": [],
    "_parse_list": [],
}
BY_KEY: dict[str, list[str]] = {
    "secret": ["NOEQUALS", "1BAD=rel/x", "A=bad name"],
    "kms_key": ["not a key id"],
    "prefix": ["bad prefix!"],
    "config": ["/nonexistent/ztr-rel.toml", "/"],
    "environment": ["bad env!"],
    "region": ["us east 1", "../../etc"],
    "endpoint_url": ["not a url", "ftp://127.0.0.1:9"],
    "timeout": ["0s", "0"],
    "refresh_interval": ["0s", "0ms"],
}
# Free text where any non-blank value is valid: a path (an unwritable one is exit 73, see
# test_disk.py) or a shell command. Only the empty flag value is bad for these.
FREE_TEXT = {"output", "output_dir", "notify_pid_file", "notify_command", "verify"}

class _PastConfig(BaseException):  # a tripwire, not an error
    """Raised instead of running the command: the configuration accepted the input."""


def _tripwire(config: Any, redactor: Any) -> int:
    raise _PastConfig(config.command)


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
             ) -> Callable[..., tuple[int | None, str]]:
    """Run ``ztr`` in process; returns (exit code or None when the input got past the
    configuration, stderr)."""

    def call(argv: list[str], env: dict[str, str] | None = None) -> tuple[int | None, str]:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            patch.setattr(commands_mod, "dispatch", _tripwire)
            try:
                code: int | None = cli.main(argv)
            except _PastConfig:
                code = None
        return code, capsys.readouterr().err

    return call


def _command(setting: Setting) -> str:
    return next(c for c in PREFERRED_COMMANDS if c in setting.commands)


def _argv(command: str, flags: dict[str, str], extra: list[str]) -> list[str]:
    argv = [command]
    for key, value in flags.items():
        argv += [next(s.flag for s in SETTINGS if s.key == key), value]
    argv += extra
    if command == "run":
        argv += ["--", "true"]
    return argv


def _values(setting: Setting, channel: str) -> list[str]:
    values = list(BY_KEY.get(setting.key, BY_PARSER.get(setting.parse.__name__, [])))
    if channel == "flag" and (setting.parse.__name__ in ("parse_text", "_parse_list")
                              or setting.key in FREE_TEXT):
        values.append("")
    return values


def _cases(channel: str) -> Iterator[Any]:
    for setting in SETTINGS:
        for value in _values(setting, channel):
            yield pytest.param(setting, value, id=f"{setting.key}={value!r}")


def _names_it(line: str, setting: Setting) -> bool:
    return setting.flag in line or setting.env in line


def test_settings_every_setting_has_bad_values_through_both_channels() -> None:
    """A new setting must come with bad values (or be declared free text)."""
    for setting in SETTINGS:
        assert _values(setting, "flag"), f"no bad flag value for {setting.key}"
        assert _values(setting, "env") or setting.key in FREE_TEXT, setting.key


@pytest.mark.parametrize(("setting", "value"), list(_cases("flag")))
def test_flag_bad_value_exits_64_naming_flag(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    setting: Setting, value: str,
) -> None:
    bad_inputs("flag values", 1)
    command = _command(setting)
    base = {**BASE[command], **EXTRA_BASE.get(setting.key, {})}
    base.pop(setting.key, None)
    if setting.switch:
        extra = [f"{setting.flag}={value}"]
    else:
        extra = [setting.flag, value]
    code, stderr = cli_main(_argv(command, base, extra))
    assert code is not None, f"{setting.flag} {value!r} got past the configuration"
    line = config_error_line(code, stderr)
    assert _names_it(line, setting), line


@pytest.mark.parametrize(("setting", "value"), list(_cases("env")))
def test_variable_bad_value_exits_64_naming_variable(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    setting: Setting, value: str,
) -> None:
    bad_inputs("variable values", 1)
    command = _command(setting)
    base = {**BASE[command], **EXTRA_BASE.get(setting.key, {})}
    base.pop(setting.key, None)
    code, stderr = cli_main(_argv(command, base, []), {setting.env: value})
    assert code is not None, f"{setting.env}={value!r} got past the configuration"
    line = config_error_line(code, stderr)
    assert _names_it(line, setting), line


# -- TOML: the same settings with values of the wrong type ------------------------------------

TOML_WRONG: dict[str, list[str]] = {
    "parse_duration": ["true", "-5", "[1]", "{ s = 1 }"],
    "parse_bool": ['"maybe"', "2", "[true]"],
    "parse_int": ['"many"', "-1", "true", "1.5", "[1]"],
    "parse_mode": ["true", "0o17777", '"abc"', "[384]"],
    "parse_owner": ["[1]", '"root"', "true"],
    "parse_signal": ["[1]", '"SIGNOPE"', "{ name = \"HUP\" }"],
    "parse_addr": ["9102", "true", "[\"127.0.0.1\", 9102]"],
    "parse_on_change": ["5", "[\"restart\"]", "true"],
    "parse": ["5", "[]", "true"],
    "parse_text": ["5", "[]", "{ a = 1 }", '""', "true"],
    "_parse_list": ["{ a = 1 }", "5", "[1, 2]"],
}


LOADING_COMMANDS = ("init", "watch", "run", "check", "iam-policy")  # the ones that read --config


def _toml_command(setting: Setting) -> str | None:
    return next((c for c in LOADING_COMMANDS if c in setting.commands), None)


def _toml_cases() -> Iterator[Any]:
    for setting in SETTINGS:
        if setting.key in ("config", "secret") or _toml_command(setting) is None:
            continue  # the file itself, the [secrets] table, and plan-only settings
        for value in TOML_WRONG.get(setting.parse.__name__, ["{ a = 1 }", "[[1]]"]):
            yield pytest.param(setting, value, id=f"{setting.key} = {value}")


@pytest.mark.parametrize(("setting", "value"), list(_toml_cases()))
def test_toml_wrong_type_exits_64_naming_file_key(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    tmp_path: Path, setting: Setting, value: str,
) -> None:
    bad_inputs("TOML wrong types", 1)
    command = _toml_command(setting)
    assert command is not None
    base = {**BASE[command], **EXTRA_BASE.get(setting.key, {})}
    base.pop(setting.key, None)
    path = tmp_path / "ztr.toml"
    path.write_text(f"{setting.key} = {value}\n")
    code, stderr = cli_main(_argv(command, base, ["--config", str(path)]))
    assert code is not None, f"{setting.key} = {value} got past the configuration"
    line = config_error_line(code, stderr)
    assert str(path) in line, line
    assert setting.key in line, line


TOML_SHAPES = {
    "unknown key": ('colour = "blue"\n', "unknown key 'colour'"),
    "unknown key in kebab case": ('refresh-intervall = "5m"\n', "unknown key 'refresh-intervall'"),
    "unknown table": ('[watch]\ninterval = "5m"\n', "unknown key 'watch'"),
    "config key inside the file": ('config = "/etc/other.toml"\n', "unknown key 'config'"),
    "secret key instead of table": ('secret = "A=x"\n', "unknown key 'secret'"),
    "secrets not a table": ('secrets = "A=x"\n', "[secrets] must be a table"),
    "secret reference not a string": ("[secrets]\nA = 5\n", "secrets.A must be a string"),
    "secret reference a table": ("[secrets.A]\nid = \"x\"\n", "secrets.A must be a string"),
    "invalid syntax": ("timeout = \n", "not valid TOML"),
    "duplicate key": ('timeout = "1s"\ntimeout = "2s"\n', "not valid TOML"),
    "unterminated string": ('region = "us-east-1\n', "not valid TOML"),
}


@pytest.mark.parametrize("shape", list(TOML_SHAPES))
def test_toml_bad_shape_exits_64_naming_file(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    tmp_path: Path, shape: str,
) -> None:
    bad_inputs("TOML shapes", 1)
    text, fragment = TOML_SHAPES[shape]
    path = tmp_path / "ztr.toml"
    path.write_text(text)
    code, stderr = cli_main(_argv("init", BASE["init"], ["--config", str(path)]))
    assert code is not None, f"{shape} got past the configuration"
    line = config_error_line(code, stderr)
    assert str(path) in line, line
    assert fragment in line, line


@pytest.mark.parametrize("what", ["a directory", "not UTF-8"])
def test_toml_unreadable_file_exits_64_naming_file(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    tmp_path: Path, what: str,
) -> None:
    bad_inputs("TOML shapes", 1)
    path = tmp_path / "ztr.toml"
    if what == "a directory":
        path.mkdir()
    else:
        path.write_bytes(b'region = "\xff\xfe"\n')
    try:
        code, stderr = cli_main(_argv("init", BASE["init"], ["--config", str(path)]))
    except Exception as exc:  # what the console script would print as a traceback
        raise AssertionError(f"{type(exc).__name__} escaped: a traceback") from exc
    assert code is not None
    assert str(path) in config_error_line(code, stderr)


# -- references of every malformed shape, through every way of declaring one -----------------

RAW_ENTRIES = ["NOEQUALS", "=rel/x", "A=", "A=   ", "A"]
MALFORMED = [  # (variable name, reference)
    ("A", "#k"), ("A", "bad name"), ("A", "x#"), ("A", "x?bogus"), ("A", "x?optional=yes"),
    ("A", "x?stage"), ("A", "x?stage="), ("A", "x?version=short"),
    ("A", "x?stage=AWSCURRENT&version=" + "a" * 32), ("A", "x?version=" + "a" * 65),
    ("A", "x?encoding=hex"), ("A", "x?encoding"), ("A", "x?optional&optional"), ("A", "x?&"),
    ("A", "x?optional&"), ("A", "x?Optional"), ("1A", "x"), ("A-B", "x"), ("A B", "x"),
    ("\u00c9", "x"), ("1_", "x#*"), ("P-", "x#*"),
    ("A", "arn:aws:secretsmanager:us-east-1:123:secret:x"), ("A", "arn:aws:s3:::bucket"),
    ("A", "sm://"), ("A", "sm://sm://x"), ("A", "x y#k"), ("A", "x\ty"), ("A", "n" * 513),
    ("A", "x?stage=A&stage=B"),
]
CHANNELS = ("--secret", "ZTR_SECRETS", "sm://", "[secrets]")


def _ref_cases() -> Iterator[Any]:
    for entry in RAW_ENTRIES:
        for channel in ("--secret", "ZTR_SECRETS"):
            if channel == "ZTR_SECRETS" and not entry.strip("= "):
                continue
            yield pytest.param(channel, entry, None, id=f"{channel}:{entry!r}")
    for name, ref in MALFORMED:
        for channel in CHANNELS:
            yield pytest.param(channel, name, ref, id=f"{channel}:{name}={ref[:40]!r}")


def test_refs_ztr_secrets_entries_are_split_as_documented() -> None:
    """A reference with ',' cannot be written in ZTR_SECRETS: the cases above have none."""
    assert not any("," in name + ref or "\n" in name + ref for name, ref in MALFORMED)


@pytest.mark.parametrize(("channel", "name", "ref"), list(_ref_cases()))
def test_refs_malformed_exits_64_one_line(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    tmp_path: Path, channel: str, name: str, ref: str | None,
) -> None:
    bad_inputs("malformed references", 1)
    entry = name if ref is None else f"{name}={ref}"
    base = {"output": BASE["init"]["output"]}
    extra: list[str] = []
    env: dict[str, str] = {}
    if channel == "--secret":
        extra = ["--secret", entry]
    elif channel == "ZTR_SECRETS":
        env["ZTR_SECRETS"] = entry
    elif channel == "sm://":
        assert ref is not None
        env[name] = ref if ref.startswith("sm://") else "sm://" + ref
    else:
        assert ref is not None
        path = tmp_path / "ztr.toml"
        path.write_text(f"[secrets]\n{json.dumps(name)} = {json.dumps(ref)}\n", encoding="utf-8")
        extra = ["--config", str(path)]
    code, stderr = cli_main(_argv("init", base, extra), env)
    assert code is not None, f"{entry!r} through {channel} got past the configuration"
    config_error_line(code, stderr)


COLLISIONS = {
    "one flag twice": (["--secret", "A=rel/x", "--secret", "A=rel/y"], {}),
    "flag and variable": (["--secret", "A=rel/x"], {"ZTR_SECRETS": "A=rel/y"}),
    "flag and sm:// variable": (["--secret", "A=rel/x"], {"A": "sm://rel/y"}),
    "preset and flag": (["--preset", "zero-to-running", "--secret", "DATABASE_PASSWORD=rel/x"], {}),
    "two entries in the variable": ([], {"ZTR_SECRETS": "A=rel/x\nA=rel/x"}),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_refs_declared_twice_exits_64_naming_both(
    cli_main: Callable[..., tuple[int | None, str]], bad_inputs: Callable[[str, int], None],
    case: str,
) -> None:
    bad_inputs("colliding names", 1)
    extra, env = COLLISIONS[case]
    code, stderr = cli_main(_argv("init", {"output": BASE["init"]["output"]}, extra), env)
    assert code is not None
    line = config_error_line(code, stderr)
    assert "declared twice" in line, line


# -- the real console scripts: a sample of the above, end to end ------------------------------

SUBPROCESS_SAMPLE = [
    (["init", "--output", "/dev/shm/x", "--secret", "A=x", "--timeout", "soon"], {}, "--timeout"),
    (["init", "--output", "/dev/shm/x", "--secret", "A=x"], {"ZTR_FILE_MODE": "rwx"}, "ZTR_FILE_MODE"),
    (["init", "--output", "/dev/shm/x"], {"ZTR_SECRETS": "A=x?stage"}, "ZTR_SECRETS"),
    (["watch", "--output", "/dev/shm/x", "--secret", "A=x", "--metrics-addr", "nowhere"], {},
     "--metrics-addr"),
    (["init", "--output", "/dev/shm/x", "--allow-disk=maybe", "--secret", "A=x"], {}, "--allow-disk"),
    (["plan", "--pods", "lots"], {}, "--pods"),
    (["init", "--output", "/dev/shm/x", "--bogus-flag", "--secret", "A=x"], {}, "--bogus-flag"),
    (["init", "--output", "/dev/shm/x", "--secret", "A=x"], {"ZTR_LOG_LEVEL": "loud"}, "ZTR_LOG_LEVEL"),
]


@pytest.mark.parametrize("sample", range(len(SUBPROCESS_SAMPLE)))
def test_cli_bad_input_exits_64_one_line_through_console_scripts(
    ztr_env: dict[str, str], bad_inputs: Callable[[str, int], None], sample: int,
) -> None:
    bad_inputs("console-script samples", 1)
    argv, env, named = SUBPROCESS_SAMPLE[sample]
    env = dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=DEAD_ENDPOINT, **env)
    result = run(argv, env, timeout=20)
    assert named in config_error_line(result.code, result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("flag", ["--region", "--endpoint-url"])
def test_cli_bad_region_or_endpoint_exits_64_not_internal_error(
    ztr_env: dict[str, str], shm: Path, bad_inputs: Callable[[str, int], None], flag: str,
) -> None:
    bad_inputs("console-script samples", 1)
    value = "us east 1" if flag == "--region" else "not a url"
    result = run(["init", "--output", str(shm / "app.env"), "--secret", "A=x", flag, value],
                 dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=DEAD_ENDPOINT), timeout=20)
    assert flag in config_error_line(result.code, result.stderr)


def test_run_huge_durations_supervise_and_stop_cleanly(
    sm: Any, ztr_env: dict[str, str], bad_inputs: Callable[[str, int], None],
) -> None:
    """Durations far beyond any sane setting ("never SIGKILL", "hardly ever poll") are either
    refused up front (64, naming the flag) or work: no OverflowError in any wait."""
    from tests.helpers.print_signals import child_argv
    from tests.helpers.proc import Proc, http

    bad_inputs("huge durations", 4)
    sm.create_secret(Name="rel/huge", SecretString="v1")
    huge = ["--grace-period", "600h", "--refresh-interval", "10000000h", "--debounce", "10000000h",
            "--min-uptime", "10000000h"]
    proc = Proc([ZTR_RUN, "--secret", "A=rel/huge", *huge, "--", *child_argv()], ztr_env)
    try:
        proc.wait_until(lambda: "ready" in proc.stdout or proc.popen.poll() is not None,
                        timeout=15, what="the app to start, or a refusal")
        if proc.popen.poll() is not None:  # refusing them up front is as good as handling them
            line = config_error_line(proc.wait(), "\n".join(proc.stderr))
            assert any(flag in line for flag in huge[::2]), line
            return
        assert http(proc.metrics_addr() + "/healthz")[0] == 200, proc.stderr[-5:]
        proc.signal()
        proc.wait_stdout("SIGTERM")
        code = proc.wait(timeout=10)
    finally:
        proc.stop()
    stderr = "\n".join(proc.stderr)
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "internal error" not in stderr, stderr[-2000:]
    assert code == 143


# -- secret values that do not fit their reference (real moto, real ztr) ----------------------


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


VALUE_CASES: dict[str, tuple[list[dict[str, Any]], str, int, str]] = {
    # name: (secrets to create, ZTR_SECRETS, exit code, fragment of the error)
    "invalid JSON with #key": ([{"Name": "v/a", "SecretString": "{not json"}], "A=v/a#k", 65,
                               "v/a is not a JSON object"),
    "JSON array with #key": ([{"Name": "v/a", "SecretString": "[1, 2]"}], "A=v/a#k", 65,
                             "is not a JSON object"),
    "JSON string with #*": ([{"Name": "v/a", "SecretString": '"text"'}], "P_=v/a#*", 65,
                            "is not a JSON object"),
    "missing JSON key": ([{"Name": "v/a", "SecretString": '{"x": 1}'}], "A=v/a#k", 65,
                         "has no JSON key 'k' (keys: x)"),
    "NUL in a string": ([{"Name": "v/a", "SecretString": "abc\x00def-nul"}], "A=v/a", 65,
                        "contains a NUL byte"),
    "NUL in a JSON value": ([{"Name": "v/a", "SecretString": json.dumps({"k": "a\x00b"})}],
                            "A=v/a#k", 65, "contains a NUL byte"),
    "NUL in a binary": ([{"Name": "v/a", "SecretBinary": b"abc\x00def"}], "A=v/a", 65,
                        "contains a NUL byte"),
    "binary not UTF-8": ([{"Name": "v/a", "SecretBinary": b"\xff\xfe\xfa-binary"}], "A=v/a", 65,
                         "is binary and not UTF-8 text: add ?encoding=base64"),
    "lone surrogate in JSON": ([{"Name": "v/a", "SecretString": '{"k": "\\ud800 x"}'}], "A=v/a#k",
                               65, "is not valid Unicode text"),
    "two #* giving one name": ([{"Name": "v/a", "SecretString": '{"user": "u1"}'},
                                {"Name": "v/b", "SecretString": '{"user": "u2"}'}],
                               "P_=v/a#*,P_=v/b#*", 64, "P_USER is given twice"),
    "one #* giving one name twice": ([{"Name": "v/a", "SecretString": '{"a-b": "1", "a_b": "2"}'}],
                                     "P_=v/a#*", 64, "P_A_B is given twice"),
    "#* against a declared name": ([{"Name": "v/a", "SecretString": '{"user": "u1"}'},
                                    {"Name": "v/b", "SecretString": "other-user"}],
                                   "P_USER=v/b,P_=v/a#*", 64, "P_USER is given twice"),
    "prefix against a declared name": ([{"Name": "v/a", "SecretString": "one-value"},
                                        {"Name": "w/b", "SecretString": "two-value"}],
                                       "A=w/b --prefix v/", 64, "A is given twice"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_values_not_fitting_reference_exit_with_code_one_record(
    sm: Any, ztr_env: dict[str, str], shm: Path, bad_inputs: Callable[[str, int], None], case: str,
) -> None:
    bad_inputs("secret values", 1)
    secrets, declared, code, fragment = VALUE_CASES[case]
    for secret in secrets:
        sm.create_secret(**secret)
    declared, _, prefix = declared.partition(" --prefix ")
    out = shm / "app.env"
    argv = ["init", "--output", str(out), *(["--prefix", prefix] if prefix else [])]
    result = run(argv, dict(ztr_env, ZTR_SECRETS=declared), timeout=30)
    assert result.code == code, result.stderr
    assert fragment in error_record(result.code, result.stderr)["msg"]
    assert not out.exists()
    assert os.listdir(shm) == []


def _value_64k() -> str:
    """Exactly 65,536 bytes of UTF-8 with everything a quoting bug trips on."""
    pattern = "q'uote\"d $HOME `cmd` \\n\\ \n\ttab é€😀 "
    text = (pattern * (70_000 // len(pattern)))
    while len(text.encode()) > 65_536:
        text = text[:-1]
    return text + "x" * (65_536 - len(text.encode()))


def test_values_64k_string_round_trips_through_file_and_environment(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    value = _value_64k()
    assert len(value.encode()) == 65_536
    sm.create_secret(Name="v/big", SecretString=value)
    env = dict(ztr_env, ZTR_SECRETS="BIG=v/big")
    for fmt in ("shell", "json"):
        out = shm / f"app.{fmt}"
        result = run(["init", "--output", str(out), "--format", fmt], env)
        assert result.code == 0, result.stderr
    assert json.loads((shm / "app.json").read_text())["BIG"] == value
    sourced = run(["-c", f'set -a; . "{shm}/app.shell"; printf %s "$BIG" | sha256sum'], env,
                  program="/bin/sh")
    assert sourced.stdout.split()[0] == _sha(value)
    child = run(["--once", "--", "sh", "-c", 'printf %s "$BIG" | sha256sum'], env, program=ZTR_RUN)
    assert child.code == 0, child.stderr
    assert child.stdout.split()[0] == _sha(value)


def test_values_64k_binary_and_json_expand_whole(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    blob = os.urandom(65_536)
    document = {f"k{i}": "v" * 4000 for i in range(16)}
    sm.create_secret(Name="v/blob", SecretBinary=blob)
    sm.create_secret(Name="v/doc", SecretString=json.dumps(document))
    env = dict(ztr_env, ZTR_SECRETS="BLOB=v/blob?encoding=base64,D_=v/doc#*")
    result = run(["init", "--output-dir", str(shm / "dir")], env)
    assert result.code == 0, result.stderr
    assert base64.b64decode((shm / "dir" / "BLOB").read_bytes()) == blob
    assert sorted(p.name for p in (shm / "dir").iterdir() if not p.name.startswith(".")) == sorted(
        ["BLOB", *(f"D_K{i}" for i in range(16))])
    assert all((shm / "dir" / f"D_K{i}").read_text() == "v" * 4000 for i in range(16))


def test_values_oversize_loads_to_file(
    sm: Any, ztr_env: dict[str, str], shm: Path, bad_inputs: Callable[[str, int], None],
) -> None:
    """Above 64 KiB AWS refuses the value (moto does not): a file still carries it whole."""
    bad_inputs("secret values", 1)
    value = "o" * 200_000
    sm.create_secret(Name="v/huge", SecretString=value)
    result = run(["init", "--output", str(shm / "app.json"), "--format", "json"],
                 dict(ztr_env, ZTR_SECRETS="HUGE=v/huge"))
    assert result.code == 0, result.stderr
    assert json.loads((shm / "app.json").read_text())["HUGE"] == value


@pytest.mark.parametrize("mode", ["once", "supervise"])
def test_values_oversize_for_environment_exits_65_naming_variable(
    sm: Any, ztr_env: dict[str, str], bad_inputs: Callable[[str, int], None], mode: str,
) -> None:
    """A variable above the kernel's 128 KiB limit (MAX_ARG_STRLEN) cannot reach a child: that
    is the value not fitting (65, naming the variable), not the command being broken (126)."""
    bad_inputs("secret values", 1)
    sm.create_secret(Name="v/huge", SecretString="o" * 200_000)
    flags = ["--once"] if mode == "once" else ["--metrics-addr", "off"]
    child = run([*flags, "--", "sh", "-c", "echo started"], dict(ztr_env, ZTR_SECRETS="HUGE=v/huge"),
                program=ZTR_RUN, timeout=30)
    assert child.stdout == ""
    record = error_record(child.code, child.stderr)
    assert child.code == 65, record
    assert "HUGE" in record["msg"], record
