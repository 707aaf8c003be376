"""One frozen Config, resolved once: flags > ZTR_* variables > TOML file > defaults.

This is the only module that reads ``os.environ``; everything else receives what it needs.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from . import refs
from .errors import ConfigError

COMMANDS = ("init", "watch", "run", "check", "iam-policy", "demo", "plan")
_LOADING = frozenset({"init", "watch", "run", "check", "iam-policy"})
_OUTPUT = frozenset({"init", "watch", "run"})
_REFRESH = frozenset({"watch", "run"})
_PLANNED = _REFRESH | {"plan"}
_LOGGING = _LOADING | {"demo", "plan"}

FORMATS = ("shell", "dotenv", "json")
REPORT_FORMATS = ("table", "json")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
PRESETS = ("zero-to-running",)
ON_CHANGE_ACTIONS = ("restart", "signal", "exit", "none")

_DURATION_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)?")
MAX_DURATION_SECONDS = 366 * 24 * 3600.0  # a year: far below what a timed wait accepts
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# Value parsers turn one raw value (a string from a flag or variable, or a TOML value)
# into a typed one; ``where`` names the flag, variable or file key for the error.
def parse_duration(raw: Any, where: str) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a plain number of seconds, at most a year."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw >= 0:
        seconds = float(raw)
    else:
        match = _DURATION_RE.fullmatch(str(raw).strip())
        if not match:
            raise ConfigError(f"{where}: {raw!r} is not a duration (examples: 30s, 5m, 1h, 250ms)")
        seconds = float(match["number"]) * _DURATION_UNITS[match["unit"]]
    if not seconds <= MAX_DURATION_SECONDS:  # also catches inf and nan
        raise ConfigError(f"{where}: {raw!r} is longer than a year (366 days), the longest "
                          "duration ztr accepts")
    return seconds


def parse_bool(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{where}: {raw!r} is not a boolean (true or false)")


def parse_int(raw: Any, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    raise ConfigError(f"{where}: {raw!r} is not a whole number")


def parse_text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw.strip()


def _choice(options: Sequence[str]) -> Callable[[Any, str], str]:
    def parse(raw: Any, where: str) -> str:
        text = str(raw).strip().lower()
        if text not in options:
            raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(options)}")
        return text

    return parse


def parse_mode(raw: Any, where: str) -> int:
    """An octal file mode: ``0600``, ``600`` or ``0o600`` (TOML's octal integers work too)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        mode = raw
    else:
        text = str(raw).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{3,4}", text):
            raise ConfigError(f"{where}: {raw!r} is not an octal file mode (example: 0600)")
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        # setuid/setgid/sticky make no sense on a secrets file; a TOML decimal 600 (0o1130)
        # lands here too.
        hint = ' (in TOML write "0600" or 0o600, not 600)' if isinstance(raw, int) else ""
        raise ConfigError(f"{where}: {raw!r} is not a file mode between 0000 and 0777{hint}")
    return mode


def parse_owner(raw: Any, where: str) -> tuple[int, int]:
    """``UID[:GID]``, numeric (a container has no user database to look names up in)."""
    match = re.fullmatch(r"(\d+)(?::(\d+))?", str(raw).strip())
    if not match:
        raise ConfigError(f"{where}: {raw!r} is not UID[:GID] (example: 65532:65532)")
    uid = int(match[1])
    return uid, int(match[2]) if match[2] is not None else uid


def parse_signal(raw: Any, where: str) -> signal.Signals:
    text = str(raw).strip().upper()
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return signal.Signals[name]
    except KeyError:
        pass
    if text.isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            pass
    raise ConfigError(f"{where}: {raw!r} is not a signal name (examples: SIGHUP, USR1)")


def parse_addr(raw: Any, where: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (all IPv4 interfaces) or ``off``."""
    import ipaddress  # here, not at the top: only this setting needs it

    text = str(raw).strip()
    if text.lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"{where}: {raw!r} is not HOST:PORT or off "
                          "(examples: 0.0.0.0:9102, [::]:9102 for IPv6)")
    if host.startswith("[") or host.endswith("]"):
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ConfigError(f"{where}: {raw!r}: {host} is not an IPv6 address in brackets "
                              "(example: [::1]:9102)") from None
        return (literal, int(port))
    if ":" in host:  # "::1:9102" could mean port 9102 of ::1 or an address ending in :9102
        raise ConfigError(f"{where}: {raw!r}: write an IPv6 address in brackets, as in [::1]:9102")
    return (host or "0.0.0.0", int(port))


# The records here are NamedTuples, not dataclasses, for import speed (see refs.FetchKey).
class OnChange(NamedTuple):
    action: str
    signal: signal.Signals | None = None


def parse_on_change(raw: Any, where: str) -> OnChange:
    text = str(raw).strip()
    action, _, sig = text.partition(":")
    action = action.lower()
    if action not in ON_CHANGE_ACTIONS:
        raise ConfigError(
            f"{where}: {raw!r} is not restart, signal:SIGNAME, exit or none"
        )
    if action == "signal":
        if not sig:
            raise ConfigError(f"{where}: signal needs a name, as in signal:SIGHUP")
        return OnChange(action, parse_signal(sig, where))
    if sig:
        raise ConfigError(f"{where}: only signal takes a ':' argument, got {raw!r}")
    return OnChange(action)


_HOST_LABEL_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # botocore's region check
_NAME_PART_RE = re.compile(r"[A-Za-z0-9/_+=.@-]+")  # what a secret name may hold
_KMS_KEY_RE = re.compile(
    r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_-]+|alias/[A-Za-z0-9/_-]+"
    r"|(mrk-)?[0-9a-fA-F-]{32,36}")


def parse_region(raw: Any, where: str) -> str:
    text = parse_text(raw, where)
    if not _HOST_LABEL_RE.fullmatch(text):
        raise ConfigError(f"{where}: {raw!r} is not an AWS region (example: us-east-1)")
    return text


def parse_url(raw: Any, where: str) -> str:
    import urllib.parse

    text = parse_text(raw, where)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: {raw!r} is not an http(s) URL "
                          "(example: https://secretsmanager.us-east-1.amazonaws.com)")
    return text


def parse_topic_arn(raw: Any, where: str) -> str:
    from . import events  # only when events are configured: off the start-up path otherwise

    return events.validate_topic_arn(parse_text(raw, where), where)


def parse_queue_url(raw: Any, where: str) -> str:
    from . import events

    return events.validate_queue_url(parse_text(raw, where), where)


def parse_name_part(raw: Any, where: str) -> str:
    text = parse_text(raw, where)
    if not _NAME_PART_RE.fullmatch(text):
        raise ConfigError(f"{where}: {raw!r} cannot be part of a secret name "
                          "(names use A-Z a-z 0-9 / _ + = . @ -)")
    return text


def parse_kms_keys(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)) and any(isinstance(i, str) and not i.strip() for i in raw):
        raise ConfigError(f"{where}: empty KMS key id")
    keys = _parse_list(raw, where)
    for key in keys:
        if not _KMS_KEY_RE.fullmatch(key):
            raise ConfigError(f"{where}: {key!r} is not a KMS key id, key ARN or alias")
    return keys


def _parse_list(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
        items = list(raw)
    elif isinstance(raw, str):
        items = refs.split_entries(raw)
    else:
        raise ConfigError(f"{where}: expected a string or a list of strings, got {raw!r}")
    return tuple(item.strip() for item in items if item.strip())


_UNSET: Any = object()  # "not given", as opposed to a value that parses to None


class Setting(NamedTuple):
    """One configurable value: its flag, its ZTR_* variable and its TOML key come from ``key``."""

    key: str
    parse: Callable[[Any, str], Any]
    default: Any
    help: str
    commands: frozenset[str]
    flag: str = ""
    env: str = ""
    switch: bool = False  # a flag without a value (--once); its variable still takes true/false
    repeat: bool = False  # a flag that may be given many times (--secret)
    metavar: str | None = None
    fallback_env: tuple[str, ...] = ()  # ecosystem variables consulted after ztr's own sources
    attr: str = ""  # the Config attribute; durations carry their unit: timeout_seconds


def _completed(setting: Setting) -> Setting:
    """Fill in what follows from ``key`` where the row does not say otherwise."""
    unit = "_seconds" if setting.parse is parse_duration else ""
    return setting._replace(flag=setting.flag or "--" + setting.key.replace("_", "-"),
                            env=setting.env or "ZTR_" + setting.key.upper(),
                            attr=setting.attr or setting.key + unit)


SETTINGS: tuple[Setting, ...] = tuple(map(_completed, (
    # What to load.
    Setting("secret", _parse_list, (), "declare a secret: NAME=REF (repeatable)", _LOADING,
            env="ZTR_SECRETS", repeat=True, metavar="NAME=REF"),
    Setting("prefix", parse_name_part, None, "load every secret whose name starts with PREFIX",
            _LOADING, metavar="PREFIX"),
    Setting("config", parse_text, None, "TOML file with settings and a [secrets] table",
            _LOADING, metavar="FILE"),
    Setting("preset", _choice(PRESETS), None, "a built-in secret set: zero-to-running",
            _LOADING, metavar="NAME"),
    Setting("environment", parse_name_part, "production",
            "environment for the preset's names (else NODE_ENV, else production)",
            _LOADING, fallback_env=("NODE_ENV",), metavar="ENV"),
    Setting("enabled", parse_bool, True,
            "false: contact no AWS endpoint and pass the environment through unchanged",
            _LOADING, metavar="BOOL"),
    # Where to load it from.
    Setting("region", parse_region, "us-east-1", "AWS region (else AWS_REGION, AWS_DEFAULT_REGION)",
            _LOADING, fallback_env=("AWS_REGION", "AWS_DEFAULT_REGION")),
    Setting("endpoint_url", parse_url, None,
            "Secrets Manager endpoint (else boto3's AWS_ENDPOINT_URL_SECRETS_MANAGER)",
            _LOADING, metavar="URL"),
    Setting("timeout", parse_duration, 60.0, "deadline for the whole load, retries included",
            _LOADING, metavar="DURATION"),
    # Logs.
    Setting("log_format", _choice(LOG_FORMATS), "json", "json or text", _LOGGING),
    Setting("log_level", _choice(LOG_LEVELS), "info", "debug, info, warning or error", _LOGGING),
    # Files.
    Setting("output", parse_text, None, "write the secrets to this env file", _OUTPUT,
            metavar="PATH"),
    Setting("format", _choice(FORMATS), "shell", "env file format: shell, dotenv or json",
            _OUTPUT),
    Setting("output_dir", parse_text, None, "write one file per variable into this directory",
            _OUTPUT, metavar="DIR"),
    Setting("file_mode", parse_mode, 0o600, "mode of written files (octal)", _OUTPUT,
            metavar="MODE"),
    Setting("owner", parse_owner, None, "UID[:GID] of written files (as root)", _OUTPUT,
            metavar="UID[:GID]"),
    Setting("allow_disk", parse_bool, False, "allow outputs that are not on tmpfs (Fargate)",
            _OUTPUT, switch=True),
    # Refresh.
    Setting("refresh_interval", parse_duration, 300.0, "how often to check for rotation",
            _PLANNED, metavar="DURATION"),
    Setting("max_stale", parse_duration, None,
            "stale after this long without a successful refresh (default 3 x interval)",
            _REFRESH, metavar="DURATION"),
    Setting("debounce", parse_duration, 5.0, "changes within this window cause one reaction",
            _REFRESH, metavar="DURATION"),
    Setting("events_topic", parse_topic_arn, None,
            "SNS topic ARN of Secrets Manager's events: own a ztr-* SQS queue on it and check a "
            "secret as soon as an event names it (polling every hour stays the floor)",
            _REFRESH | {"iam-policy"}, metavar="ARN"),
    Setting("events_queue", parse_queue_url, None,
            "an SQS queue URL that this process alone reads Secrets Manager's events from",
            _REFRESH | {"iam-policy"}, metavar="URL"),
    Setting("metrics_addr", parse_addr, ("127.0.0.1", 9102),
            "HOST:PORT for /metrics, /healthz, /readyz, /refresh; off disables", _REFRESH,
            metavar="ADDR"),
    # ztr watch.
    Setting("notify_signal", parse_signal, None, "signal sent after a rewrite", frozenset({"watch"}),
            metavar="SIG"),
    Setting("notify_pid_file", parse_text, None, "file holding the PID to signal",
            frozenset({"watch"}), metavar="FILE"),
    Setting("notify_command", parse_text, None, "command run (via sh -c) after a rewrite",
            frozenset({"watch"}), metavar="CMD"),
    # ztr run.
    Setting("once", parse_bool, False, "exec the command after loading: no supervision, no refresh",
            frozenset({"run"}), switch=True),
    Setting("grace_period", parse_duration, 25.0, "wait this long after SIGTERM before SIGKILL",
            frozenset({"run"}), metavar="DURATION"),
    Setting("on_change", parse_on_change, OnChange("restart"),
            "restart, signal:SIGNAME, exit or none", frozenset({"run"}), metavar="ACTION"),
    Setting("verify", parse_text, None, "run CMD (sh -c) with the new environment before reacting",
            frozenset({"run"}), metavar="CMD"),
    Setting("min_uptime", parse_duration, 10.0, "a child runs at least this long before a restart",
            frozenset({"run"}), metavar="DURATION"),
    Setting("max_restarts", parse_int, 6, "at most this many change restarts per hour",
            frozenset({"run"}), metavar="N"),
    Setting("splay", parse_duration, 0.0, "delay each reaction by a random time up to this",
            frozenset({"run"}), metavar="DURATION"),
    # ztr check / iam-policy / plan.
    Setting("report_format", _choice(REPORT_FORMATS), "table", "table or json",
            frozenset({"check", "plan"}), flag="--format"),
    Setting("kms_key", parse_kms_keys, (), "add kms:Decrypt on this key ARN (repeatable)",
            frozenset({"iam-policy"}), env="ZTR_KMS_KEYS", repeat=True, metavar="ARN",
            attr="kms_keys"),
    Setting("pods", parse_int, 10, "number of pods (or tasks) in the fleet", frozenset({"plan"}),
            metavar="N"),
    Setting("events", parse_bool, False,
            "price push rotation (events, polling at the events floor) beside polling alone",
            frozenset({"plan"}), switch=True),
    Setting("secrets_per_pod", parse_int, 4, "secrets each pod loads", frozenset({"plan"}),
            flag="--secrets", metavar="M"),
)))
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}
ENV_VARS = frozenset(setting.env for setting in SETTINGS)


class Config(NamedTuple):
    """Everything a command needs, resolved and validated once. Each setting's default, flag,
    variable and TOML key live in its ``Setting`` row; ``load`` fills every attribute."""

    command: str
    bindings: tuple[refs.Binding, ...]
    enabled: bool
    disabled_reason: str
    command_args: tuple[str, ...]
    # The whole parent environment (AWS keys included): never in a repr.
    parent_env: Mapping[str, str]
    prefix: str | None
    preset: str | None
    environment: str
    region: str
    endpoint_url: str | None
    timeout_seconds: float
    log_format: str
    log_level: str
    output: str | None
    format: str
    output_dir: str | None
    file_mode: int
    owner: tuple[int, int] | None
    allow_disk: bool
    refresh_interval_seconds: float
    max_stale_seconds: float
    debounce_seconds: float
    metrics_addr: tuple[str, int] | None
    events_topic: str | None
    events_queue: str | None
    events: bool
    notify_signal: signal.Signals | None
    notify_pid_file: str | None
    notify_command: str | None
    once: bool
    grace_period_seconds: float
    on_change: OnChange
    verify: str | None
    min_uptime_seconds: float
    max_restarts: int
    splay_seconds: float
    report_format: str
    kms_keys: tuple[str, ...]
    pods: int
    secrets_per_pod: int

    def __repr__(self) -> str:
        shown = (f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)
                 if name != "parent_env")
        return f"Config({', '.join(shown)})"


_RESOLVED_APART = {"secret", "config", "enabled"}  # bindings, the file, the gate
_PATHS = ("output", "output_dir", "notify_pid_file")  # absolute: ztr-run moves itself to /


class Rule(NamedTuple):
    """A check across settings for some commands: ``holds(values, has_app)`` or the message."""

    commands: frozenset[str]
    holds: Callable[[Mapping[str, Any], bool], bool]
    message: str


RULES: tuple[Rule, ...] = (
    Rule(_LOADING, lambda v, app: v["timeout"] > 0,
         "--timeout must be more than 0s (it bounds the whole load, retries included)"),
    Rule(_REFRESH, lambda v, app: v["refresh_interval"] > 0, "--refresh-interval must be more than 0s"),
    Rule(frozenset({"run"}), lambda v, app: app,
         "ztr run needs a command after --, as in: ztr-run -- python -m app"),
    Rule(frozenset({"watch"}), lambda v, app: bool(v["output"] or v["output_dir"]),
         "ztr watch needs --output or --output-dir to keep current"),
    Rule(frozenset({"init"}), lambda v, app: bool(v["output"] or v["output_dir"]),
         "ztr init needs --output or --output-dir"),
    Rule(frozenset({"watch"}), lambda v, app: not v["notify_signal"] or bool(v["notify_pid_file"]),
         "--notify-signal needs --notify-pid-file naming the process to signal"),
    Rule(_REFRESH | {"iam-policy"}, lambda v, app: not (v["events_topic"] and v["events_queue"]),
         "--events-topic and --events-queue exclude each other: a topic gives this process its "
         "own queue; --events-queue names one it alone reads"),
)
# With events on, a rotation arrives in seconds: polling is only the floor for lost events.
EVENTS_REFRESH_INTERVAL_SECONDS = 3600.0


def early_log_format(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The log format for an error found before the configuration is whole: the flag or the
    variable if they name a known format, else the default."""
    env = os.environ if environ is None else environ
    candidates = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--log-format"]
    candidates += [arg.partition("=")[2] for arg in argv if arg.startswith("--log-format=")]
    candidates.append(env.get("ZTR_LOG_FORMAT", ""))
    for candidate in candidates:
        if candidate.strip().lower() in LOG_FORMATS:
            return candidate.strip().lower()
    return str(SETTINGS_BY_KEY["log_format"].default)


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib  # only when a file is given: keeps the start-up path short

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    return data


def _file_settings(path: str, command: str) -> tuple[dict[str, Any], list[refs.Binding]]:
    data = _read_toml(path)
    secrets = data.pop("secrets", {})
    if not isinstance(secrets, dict):
        raise ConfigError(f"--config {path}: [secrets] must be a table of NAME = \"REF\"")
    bindings = []
    for name, ref in secrets.items():
        if not isinstance(ref, str):
            raise ConfigError(f"--config {path}: secrets.{name} must be a string reference")
        bindings.append(refs.parse_binding(f"{name}={ref}", f"{path} [secrets]"))
    values: dict[str, Any] = {}
    for key, raw in data.items():
        setting = SETTINGS_BY_KEY.get(key.replace("-", "_"))
        if setting is None or setting.key in ("config", "secret"):
            known = ", ".join(sorted(s.key for s in SETTINGS if s.key not in ("config", "secret")))
            raise ConfigError(f"--config {path}: unknown key {key!r} (known: {known}, [secrets])")
        if command in setting.commands:
            values[setting.key] = setting.parse(raw, f"{path} {key}")
    return values, bindings


def _env_bindings(environ: Mapping[str, str]) -> list[refs.Binding]:
    """Variables whose value is an ``sm://`` reference declare a secret under their own name."""
    return [
        refs.parse_binding(f"{name}={value}", f"environment variable {name}")
        for name, value in sorted(environ.items())
        if value.startswith(refs.URI_SCHEME) and not name.startswith("ZTR_")
    ]


def preset_bindings(preset: str, environment: str) -> list[refs.Binding]:
    """The seed guide's four secrets: two required, two optional."""
    base = f"{environment}/zero-to-running/"
    origin = f"preset {preset}"
    table = (
        ("DATABASE_PASSWORD", "database-password", False),
        ("SESSION_SECRET", "session-secret", False),
        ("REDIS_PASSWORD", "redis-password", True),
        ("JWT_SECRET", "jwt-secret", True),
    )
    return [
        refs.Binding(name, refs.SecretRef(base + secret, optional=optional), origin)
        for name, secret, optional in table
    ]


def check_collisions(bindings: Sequence[refs.Binding]) -> None:
    """Two declarations of one variable are an error naming both."""
    seen: dict[str, refs.Binding] = {}
    for binding in bindings:
        if binding.is_wildcard:
            continue
        other = seen.get(binding.name)
        if other is not None:
            raise ConfigError(
                f"{binding.name} is declared twice: by {other.origin} and by {binding.origin}"
            )
        seen[binding.name] = binding


def load(
    command: str,
    flags: Mapping[str, Any],
    command_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve every setting for ``command``. ``flags`` maps setting keys to raw flag values
    (None where a flag was not given). Raises ConfigError naming the flag, variable or key."""
    env = dict(os.environ if environ is None else environ)
    relevant = [s for s in SETTINGS if command in s.commands]

    def from_flag_or_env(setting: Setting) -> Any:
        """The parsed value, or _UNSET. A parsed None is a real value (``--metrics-addr off``)."""
        raw = flags.get(setting.key)
        if raw is not None and raw != []:
            return setting.parse(raw, setting.flag)
        if setting.env in env and env[setting.env].strip():
            return setting.parse(env[setting.env], setting.env)
        return _UNSET

    config_path = from_flag_or_env(SETTINGS_BY_KEY["config"]) if command in _LOADING else _UNSET
    file_values, file_bindings = (
        _file_settings(config_path, command) if config_path is not _UNSET else ({}, [])
    )

    values: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    given: set[str] = set()
    for setting in relevant:
        value = from_flag_or_env(setting)
        if value is _UNSET:
            value = file_values.get(setting.key, _UNSET)
        if value is _UNSET:
            for name in setting.fallback_env:
                if env.get(name, "").strip():
                    value = setting.parse(env[name], name)
                    break
        if value is not _UNSET:
            given.add(setting.key)
        values[setting.key] = setting.default if value is _UNSET else value
    if (values["events_topic"] or values["events_queue"]) and "refresh_interval" not in given:
        values["refresh_interval"] = EVENTS_REFRESH_INTERVAL_SECONDS

    bindings: list[refs.Binding] = []
    secret_setting = SETTINGS_BY_KEY["secret"]
    for entry in flags.get("secret") or ():
        bindings.append(refs.parse_binding(entry, secret_setting.flag))
    for entry in refs.split_entries(env.get(secret_setting.env, "")):
        bindings.append(refs.parse_binding(entry, secret_setting.env))
    bindings.extend(file_bindings)
    if command in _LOADING:
        bindings.extend(_env_bindings(env))
        if values.get("preset"):
            bindings.extend(preset_bindings(values["preset"], values["environment"]))
    check_collisions(bindings)

    enabled = bool(values.get("enabled", True))
    reason = "" if enabled else "ZTR_ENABLED=false"
    use_aws = env.get("USE_AWS_SECRETS")
    if use_aws is not None and use_aws.strip().lower() != "true":
        enabled, reason = False, f"USE_AWS_SECRETS={use_aws}"

    for rule in RULES:
        if command in rule.commands and not rule.holds(values, bool(command_args)):
            raise ConfigError(rule.message)
    if (
        command in _LOADING
        and enabled
        and not bindings
        and not values.get("prefix")
    ):
        raise ConfigError(
            "no secrets declared: use --secret NAME=REF, ZTR_SECRETS, sm:// variables, "
            "--prefix, --config or --preset"
        )

    for key in _PATHS:
        if values[key] is not None:
            values[key] = os.path.abspath(values[key])
    if values["max_stale"] is None:
        values["max_stale"] = 3 * values["refresh_interval"]
    kwargs = {s.attr: values[s.key] for s in SETTINGS if s.key not in _RESOLVED_APART}
    return Config(
        command=command,
        bindings=tuple(bindings),
        enabled=enabled,
        disabled_reason=reason,
        command_args=tuple(command_args),
        parent_env=MappingProxyType(env),
        **kwargs,
    )
