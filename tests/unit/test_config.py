"""Configuration: precedence, validation, collisions, the gate and the preset."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sidecar import config as config_mod
from sidecar.cli import resolve_config
from sidecar.config import Config
from sidecar.errors import ConfigError

OUT = ["--output", "/dev/shm/ztr-unit/env"]


def load(argv: list[str], env: dict[str, str] | None = None, command: str = "init") -> Config:
    """Resolve exactly as the CLI does, with an explicit environment (never os.environ)."""
    return resolve_config(command, argv, dict(env or {}))


def fails(argv: list[str], env: dict[str, str] | None = None, command: str = "init") -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, env, command)
    assert caught.value.exit_code == 64
    return str(caught.value)


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ztr.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- precedence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "toml", "expected"),
    [
        ("7s", "8s", "9s", 7.0),
        (None, "8s", "9s", 8.0),
        (None, None, "9s", 9.0),
        (None, None, None, 60.0),
    ],
)
def test_config_timeout_flag_over_env_over_file_over_default(
    tmp_path: Path, flag: str | None, env: str | None, toml: str | None, expected: float
) -> None:
    argv = [*OUT, "--secret", "A=a"]
    environ: dict[str, str] = {}
    if flag:
        argv += ["--timeout", flag]
    if env:
        environ["ZTR_TIMEOUT"] = env
    if toml:
        argv += ["--config", write_toml(tmp_path, f'timeout = "{toml}"\n')]
    assert load(argv, environ).timeout_seconds == expected


@pytest.mark.parametrize(
    ("argv", "env", "toml", "expected"),
    [
        (["--region", "eu-west-1"], {"ZTR_REGION": "eu-west-2", "AWS_REGION": "eu-west-3"},
         "eu-central-1", "eu-west-1"),
        ([], {"ZTR_REGION": "eu-west-2", "AWS_REGION": "eu-west-3"}, "eu-central-1", "eu-west-2"),
        ([], {"AWS_REGION": "eu-west-3"}, "eu-central-1", "eu-central-1"),
        ([], {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}, None, "eu-west-3"),
        ([], {"AWS_DEFAULT_REGION": "ap-south-1"}, None, "ap-south-1"),
        ([], {}, None, "us-east-1"),
    ],
)
def test_config_region_sources_resolve_in_order(
    tmp_path: Path, argv: list[str], env: dict[str, str], toml: str | None, expected: str
) -> None:
    full = [*OUT, "--secret", "A=a", *argv]
    if toml:
        full += ["--config", write_toml(tmp_path, f'region = "{toml}"\n')]
    assert load(full, env).region == expected


def test_config_env_variables_set_every_kind_of_value() -> None:
    cfg = load([], {
        "ZTR_SECRETS": "A=a", "ZTR_OUTPUT": "/dev/shm/x/env", "ZTR_FORMAT": "dotenv",
        "ZTR_FILE_MODE": "0640", "ZTR_OWNER": "1000:2000", "ZTR_ALLOW_DISK": "true",
        "ZTR_LOG_FORMAT": "text", "ZTR_LOG_LEVEL": "debug", "ZTR_ENDPOINT_URL": "http://h:1",
    })
    assert (cfg.output, cfg.format, cfg.file_mode, cfg.owner, cfg.allow_disk) == (
        "/dev/shm/x/env", "dotenv", 0o640, (1000, 2000), True)
    assert (cfg.log_format, cfg.log_level, cfg.endpoint_url) == ("text", "debug", "http://h:1")


def test_config_file_sets_settings_and_secrets(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
format = "json"
file-mode = 0o640
allow_disk = true
output = "/dev/shm/x/env.json"

[secrets]
DB_PASSWORD = "prod/db#password"
API_ = "prod/api#*"
""")
    cfg = load(["--config", path])
    assert (cfg.format, cfg.file_mode, cfg.allow_disk, cfg.output) == (
        "json", 0o640, True, "/dev/shm/x/env.json")
    assert [(b.name, b.ref.secret_id, b.ref.key) for b in cfg.bindings] == [
        ("DB_PASSWORD", "prod/db", "password"), ("API_", "prod/api", "*")]
    assert all(path in b.origin for b in cfg.bindings)


def test_config_file_from_ztr_config_variable_is_read(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[secrets]\nTOKEN = "tok"\n')
    cfg = load(OUT, {"ZTR_CONFIG": path})
    assert [b.name for b in cfg.bindings] == ["TOKEN"]


def test_config_file_keys_of_other_commands_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'grace_period = "5s"\n[secrets]\nA = "a"\n')
    assert load([*OUT, "--config", path]).grace_period_seconds == 25.0
    assert load(["--config", path, "--", "true"], command="run").grace_period_seconds == 5.0


# -- every source of secrets combines ----------------------------------------------------------


def test_config_declarations_from_every_source_combine(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[secrets]\nFROM_FILE = "f"\n')
    cfg = load([*OUT, "--secret", "FROM_FLAG=a", "--secret", "FROM_FLAG2=b", "--config", path], {
        "ZTR_SECRETS": "FROM_ENV1=c,FROM_ENV2=d\nFROM_ENV3=e",
        "DATABASE_URL": "sm://prod/db#url",
        "ZTR_OTHER": "sm://ignored",
        "PLAIN": "not a reference",
    })
    assert [(b.name, b.origin) for b in cfg.bindings] == [
        ("FROM_FLAG", "--secret"), ("FROM_FLAG2", "--secret"),
        ("FROM_ENV1", "ZTR_SECRETS"), ("FROM_ENV2", "ZTR_SECRETS"), ("FROM_ENV3", "ZTR_SECRETS"),
        ("FROM_FILE", f"{path} [secrets]"),
        ("DATABASE_URL", "environment variable DATABASE_URL"),
    ]


def test_config_prefix_alone_is_a_declaration() -> None:
    cfg = load([*OUT, "--prefix", "prod/app/"])
    assert (cfg.prefix, cfg.bindings) == ("prod/app/", ())


@pytest.mark.parametrize(
    ("env", "base"),
    [
        ({}, "production/zero-to-running/"),
        ({"NODE_ENV": "development"}, "development/zero-to-running/"),
        ({"NODE_ENV": "development", "ZTR_ENVIRONMENT": "staging"}, "staging/zero-to-running/"),
    ],
)
def test_config_preset_names_follow_environment(env: dict[str, str], base: str) -> None:
    cfg = load([*OUT, "--preset", "zero-to-running"], env)
    assert [(b.name, b.ref.secret_id, b.ref.optional) for b in cfg.bindings] == [
        ("DATABASE_PASSWORD", base + "database-password", False),
        ("SESSION_SECRET", base + "session-secret", False),
        ("REDIS_PASSWORD", base + "redis-password", True),
        ("JWT_SECRET", base + "jwt-secret", True),
    ]


def test_config_preset_from_variable_and_flag_environment() -> None:
    cfg = load([*OUT, "--environment", "qa"], {"ZTR_PRESET": "zero-to-running", "NODE_ENV": "x"})
    assert cfg.bindings[0].ref.secret_id == "qa/zero-to-running/database-password"


# -- collisions name both origins --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "origins"),
    [
        (["--secret", "A=x", "--secret", "A=y"], {}, ("--secret", "--secret")),
        (["--secret", "A=x"], {"ZTR_SECRETS": "A=y"}, ("--secret", "ZTR_SECRETS")),
        ([], {"ZTR_SECRETS": "A=y", "A": "sm://z"}, ("ZTR_SECRETS", "environment variable A")),
        (["--preset", "zero-to-running"], {"DATABASE_PASSWORD": "sm://mine"},
         ("environment variable DATABASE_PASSWORD", "preset zero-to-running")),
    ],
)
def test_config_two_declarations_of_one_name_raise_naming_both(
    argv: list[str], env: dict[str, str], origins: tuple[str, str]
) -> None:
    message = fails([*OUT, *argv], env)
    assert "declared twice" in message
    assert f"by {origins[0]} and by {origins[1]}" in message


def test_config_file_and_flag_collision_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[secrets]\nA = "a"\n')
    message = fails([*OUT, "--secret", "A=b", "--config", path])
    assert "--secret" in message
    assert path in message


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--timeout", "5x"], {}, "--timeout: '5x' is not a duration"),
        (["--timeout=-1s"], {}, "--timeout: '-1s' is not a duration"),
        ([], {"ZTR_TIMEOUT": "soon"}, "ZTR_TIMEOUT: 'soon' is not a duration"),
        (["--timeout", "0"], {}, "--timeout must be more than 0"),
        (["--file-mode", "0800"], {}, "--file-mode: '0800' is not an octal file mode"),
        (["--file-mode", "rw-------"], {}, "is not an octal file mode"),
        ([], {"ZTR_FILE_MODE": "12"}, "ZTR_FILE_MODE: '12' is not an octal file mode"),
        (["--file-mode", "4755"], {}, "--file-mode: '4755' is not a file mode between 0000 and 0777"),
        (["--owner", "root"], {}, "--owner: 'root' is not UID[:GID]"),
        (["--owner", "1000:app"], {}, "is not UID[:GID]"),
        (["--format", "yaml"], {}, "--format: 'yaml' is not one of shell, dotenv, json"),
        ([], {"ZTR_ALLOW_DISK": "maybe"}, "ZTR_ALLOW_DISK: 'maybe' is not a boolean"),
        ([], {"ZTR_ENABLED": "nope"}, "ZTR_ENABLED: 'nope' is not a boolean"),
        (["--log-level", "loud"], {}, "--log-level: 'loud' is not one of"),
        (["--preset", "other"], {}, "--preset: 'other' is not one of zero-to-running"),
        (["--secret", "bad-name=x"], {}, "--secret: 'bad-name' is not a valid environment"),
        ([], {"ZTR_SECRETS": "A=x?stage=S&version=V"}, "ZTR_SECRETS A: use either stage="),
        ([], {"APP_DB": "sm://"}, "environment variable APP_DB"),
    ],
)
def test_config_bad_values_raise_naming_the_source(
    argv: list[str], env: dict[str, str], fragment: str
) -> None:
    assert fragment in fails([*OUT, "--secret", "OK=ok", *argv], env)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--notify-signal", "SIGFOO", "--notify-pid-file", "/x"], "'SIGFOO' is not a signal name"),
        (["--notify-signal", "HUP"], "--notify-signal needs --notify-pid-file"),
        (["--refresh-interval", "0s"], "--refresh-interval must be more than 0s"),
        (["--metrics-addr", "nowhere"], "is not HOST:PORT or off"),
    ],
)
def test_config_bad_watch_values_raise(argv: list[str], fragment: str) -> None:
    assert fragment in fails([*OUT, "--secret", "OK=ok", *argv], command="watch")


@pytest.mark.parametrize(("raw", "expected"), [
    ("SIGHUP", signal.SIGHUP), ("hup", signal.SIGHUP), ("USR1", signal.SIGUSR1), ("15", signal.SIGTERM),
])
def test_config_signal_names_and_numbers_parse(raw: str, expected: signal.Signals) -> None:
    assert config_mod.parse_signal(raw, "--notify-signal") == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("2.5", 2.5), (3, 3.0),
])
def test_config_durations_parse_to_seconds(raw: object, expected: float) -> None:
    assert config_mod.parse_duration(raw, "--timeout") == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("0600", 0o600), ("600", 0o600), ("0o640", 0o640), (0o644, 0o644), ("0400", 0o400),
])
def test_config_modes_parse_as_octal(raw: object, expected: int) -> None:
    assert config_mod.parse_mode(raw, "--file-mode") == expected


@pytest.mark.parametrize(("raw", "expected"), [("1000", (1000, 1000)), ("1000:2000", (1000, 2000))])
def test_config_owner_without_gid_uses_uid(raw: str, expected: tuple[int, int]) -> None:
    assert config_mod.parse_owner(raw, "--owner") == expected


def test_config_file_decimal_mode_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'file_mode = 600\n[secrets]\nA = "a"\n')
    assert 'write "0600" or 0o600' in fails(["--config", path, *OUT])


def test_config_unknown_file_key_raises_naming_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'timeout = "5s"\nretries = 3\n[secrets]\nA = "a"\n')
    message = fails(["--config", path, *OUT])
    assert f"--config {path}: unknown key 'retries'" in message
    assert "timeout" in message  # the known keys are listed


@pytest.mark.parametrize("text", ['secret = ["A=a"]\n', 'config = "other.toml"\n'])
def test_config_file_cannot_hold_secret_or_config_keys(tmp_path: Path, text: str) -> None:
    assert "unknown key" in fails(["--config", write_toml(tmp_path, text), *OUT])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('timeout = "5s\n', "not valid TOML"),
        ("[secrets]\nA = 5\n", "secrets.A must be a string reference"),
        ('secrets = "A=a"\n', "[secrets] must be a table"),
        ('[secrets]\n"bad name" = "a"\n', "'bad name' is not a valid environment variable name"),
        ('[secrets]\nA = "a?nope"\n', "unknown option 'nope'"),
        ('timeout = "fast"\n[secrets]\nA = "a"\n', "timeout: 'fast' is not a duration"),
        ('format = 3\n[secrets]\nA = "a"\n', "format: 3 is not one of"),
    ],
)
def test_config_bad_file_raises_naming_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_toml(tmp_path, text)
    message = fails(["--config", path, *OUT])
    assert path in message
    assert fragment in message


def test_config_missing_file_raises_naming_file(tmp_path: Path) -> None:
    message = fails(["--config", str(tmp_path / "absent.toml"), *OUT])
    assert "absent.toml: cannot read it" in message


def test_config_no_declaration_raises_listing_the_ways() -> None:
    message = fails(OUT)
    assert "no secrets declared" in message
    assert "--secret NAME=REF" in message


def test_config_init_without_output_raises() -> None:
    assert "needs --output or --output-dir" in fails(["--secret", "A=a"])


def test_config_run_without_command_raises() -> None:
    assert "needs a command after --" in fails(["--secret", "A=a"], command="run")


# -- the gate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "enabled", "reason"),
    [
        ({}, True, ""),
        ({"USE_AWS_SECRETS": "true"}, True, ""),
        ({"USE_AWS_SECRETS": "TRUE"}, True, ""),
        ({"USE_AWS_SECRETS": "false"}, False, "USE_AWS_SECRETS=false"),
        ({"USE_AWS_SECRETS": "1"}, False, "USE_AWS_SECRETS=1"),
        ({"USE_AWS_SECRETS": ""}, False, "USE_AWS_SECRETS="),
        ({"ZTR_ENABLED": "false"}, False, "ZTR_ENABLED=false"),
        ({"ZTR_ENABLED": "true", "USE_AWS_SECRETS": "no"}, False, "USE_AWS_SECRETS=no"),
    ],
)
def test_config_gate_variables_decide_enabled(env: dict[str, str], enabled: bool, reason: str) -> None:
    cfg = load([*OUT, "--secret", "A=a"], env)
    assert (cfg.enabled, cfg.disabled_reason) == (enabled, reason)


def test_config_gate_closed_needs_no_declaration() -> None:
    cfg = load(OUT, {"USE_AWS_SECRETS": "false"})
    assert not cfg.enabled
    assert cfg.bindings == ()


def test_config_parent_env_is_the_given_environment() -> None:
    env = {"PATH": "/bin", "DB": "sm://db"}
    cfg = load(["--", "app"], env, command="run")
    assert dict(cfg.parent_env) == env
    assert cfg.command_args == ("app",)


def test_config_env_vars_lists_one_variable_per_setting() -> None:
    assert {"ZTR_SECRETS", "ZTR_PREFIX", "ZTR_TIMEOUT", "ZTR_OUTPUT", "ZTR_ALLOW_DISK",
            "ZTR_ENABLED", "ZTR_CONFIG", "ZTR_PRESET"} <= config_mod.ENV_VARS
    assert len(config_mod.ENV_VARS) == len({s.key for s in config_mod.SETTINGS})


@pytest.mark.parametrize("source", ["flag", "variable", "file"])
def test_config_metrics_addr_off_disables_endpoints(source: str, tmp_path: Path) -> None:
    flags: dict[str, object] = {"output": "/dev/shm/x.env"}
    environ = {"ZTR_SECRETS": "A=prod/a"}
    if source == "flag":
        flags["metrics_addr"] = "off"
    elif source == "variable":
        environ["ZTR_METRICS_ADDR"] = "off"
    else:
        toml = tmp_path / "ztr.toml"
        toml.write_text('metrics_addr = "off"\n')
        flags["config"] = str(toml)
    assert config_mod.load("watch", flags, environ=environ).metrics_addr is None


def test_config_repr_holds_no_parent_environment() -> None:
    loaded = config_mod.load("init", {"output": "/dev/shm/x.env"},
                             environ={"ZTR_SECRETS": "A=prod/a", "AWS_SECRET_ACCESS_KEY": "k3y-value"})
    assert loaded.parent_env["AWS_SECRET_ACCESS_KEY"] == "k3y-value"
    assert "k3y-value" not in repr(loaded)
