"""One frozen Config, resolved once: flags > ZTR_* variables > TOML file > defaults.

This is the only module that reads ``os.environ``; everything else receives what it needs.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# Value parsers turn one raw value (a string from a flag or variable, or a TOML value)
# into a typed one; ``where`` names the flag, variable or file key for the error.
def parse_duration(raw: Any, where: str) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a plain number of seconds."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw >= 0:
        return float(raw)
    match = _DURATION_RE.fullmatch(str(raw).strip())
    if not match:
        raise ConfigError(f"{where}: {raw!r} is not a duration (examples: 30s, 5m, 1h, 250ms)")
    return float(match["number"]) * _DURATION_UNITS[match["unit"]]


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


@dataclass(frozen=True)
class OnChange:
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


@dataclass(frozen=True)
class Setting:
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

    def __post_init__(self) -> None:
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.key.replace("_", "-"))
        if not self.env:
            object.__setattr__(self, "env", "ZTR_" + self.key.upper())


SETTINGS: tuple[Setting, ...] = (
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
            frozenset({"iam-policy"}), env="ZTR_KMS_KEYS", repeat=True, metavar="ARN"),
    Setting("pods", parse_int, 10, "number of pods (or tasks) in the fleet", frozenset({"plan"}),
            metavar="N"),
    Setting("secrets_per_pod", parse_int, 4, "secrets each pod loads", frozenset({"plan"}),
            flag="--secrets", metavar="M"),
)
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}
ENV_VARS = frozenset(setting.env for setting in SETTINGS)


@dataclass(frozen=True)
class Config:
    """Everything a command needs, resolved and validated once."""

    command: str
    bindings: tuple[refs.Binding, ...] = ()
    prefix: str | None = None
    preset: str | None = None
    environment: str = "production"
    enabled: bool = True
    disabled_reason: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    timeout_seconds: float = 60.0
    log_format: str = "json"
    log_level: str = "info"
    output: str | None = None
    format: str = "shell"
    output_dir: str | None = None
    file_mode: int = 0o600
    owner: tuple[int, int] | None = None
    allow_disk: bool = False
    refresh_interval_seconds: float = 300.0
    max_stale_seconds: float = 900.0
    debounce_seconds: float = 5.0
    metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9102)
    notify_signal: signal.Signals | None = None
    notify_pid_file: str | None = None
    notify_command: str | None = None
    once: bool = False
    grace_period_seconds: float = 25.0
    on_change: OnChange = OnChange("restart")
    verify: str | None = None
    min_uptime_seconds: float = 10.0
    max_restarts: int = 6
    splay_seconds: float = 0.0
    report_format: str = "table"
    kms_keys: tuple[str, ...] = ()
    pods: int = 10
    secrets_per_pod: int = 4
    command_args: tuple[str, ...] = ()
    # The whole parent environment (AWS keys included): never in a repr.
    parent_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def has_outputs(self) -> bool:
        return self.output is not None or self.output_dir is not None


# Settings whose Config attribute carries the unit in its name.
_ATTR_NAMES = {
    "timeout": "timeout_seconds",
    "refresh_interval": "refresh_interval_seconds",
    "max_stale": "max_stale_seconds",
    "debounce": "debounce_seconds",
    "grace_period": "grace_period_seconds",
    "min_uptime": "min_uptime_seconds",
    "splay": "splay_seconds",
    "kms_key": "kms_keys",
}
_RESOLVED_APART = {"secret", "config", "enabled"}  # bindings, the file, the gate


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

    values: dict[str, Any] = {}
    for setting in relevant:
        value = from_flag_or_env(setting)
        if value is _UNSET:
            value = file_values.get(setting.key, _UNSET)
        if value is _UNSET:
            for name in setting.fallback_env:
                if env.get(name, "").strip():
                    value = setting.parse(env[name], name)
                    break
        values[setting.key] = setting.default if value is _UNSET else value

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

    if command in _LOADING and values["timeout"] <= 0:
        raise ConfigError("--timeout must be more than 0s (it bounds the whole load, retries included)")
    interval = values.get("refresh_interval", 300.0)
    if command in _REFRESH and interval <= 0:
        raise ConfigError("--refresh-interval must be more than 0s")
    if command == "run" and not command_args:
        raise ConfigError("ztr run needs a command after --, as in: ztr-run -- python -m app")
    if command == "watch" and not (values.get("output") or values.get("output_dir")):
        raise ConfigError("ztr watch needs --output or --output-dir to keep current")
    if command == "init" and not (values.get("output") or values.get("output_dir")):
        raise ConfigError("ztr init needs --output or --output-dir")
    if values.get("notify_signal") and not values.get("notify_pid_file"):
        raise ConfigError("--notify-signal needs --notify-pid-file naming the process to signal")
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

    kwargs: dict[str, Any] = {}
    for setting in relevant:
        if setting.key in _RESOLVED_APART:
            continue
        kwargs[_ATTR_NAMES.get(setting.key, setting.key)] = values[setting.key]
    if command in _REFRESH and kwargs.get("max_stale_seconds") is None:
        kwargs["max_stale_seconds"] = 3 * interval
    return Config(
        command=command,
        bindings=tuple(bindings),
        enabled=enabled,
        disabled_reason=reason,
        command_args=tuple(command_args),
        parent_env=MappingProxyType(env),
        **kwargs,
    )
