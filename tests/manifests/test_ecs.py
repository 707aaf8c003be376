"""ECS task definitions in ecs/: botocore's shape, enum values, cross-field rules, ztr's own parser, moto.

botocore's ParamValidator checks structure and types but not enum values or rules that span fields,
and moto registers almost anything, so the enums and the rules are checked here, and every check is
proven by a deliberately broken copy that it must reject.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.model import ListShape, MapShape, Shape, StringShape, StructureShape
from botocore.session import get_session
from botocore.validate import ParamValidator
from moto import mock_aws

from sidecar import cli, refs
from sidecar import config as ztr_config
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ECS_DIR = ROOT / "ecs"
# Push rotation: exec-wrapper.json plus ZTR_EVENTS_TOPIC, under every check like the others.
EVENTS_TASK_DEFINITION = "exec-wrapper-events.json"
TASK_DEFINITIONS = ("fargate-init.json", "ec2-init.json", "exec-wrapper.json", EVENTS_TASK_DEFINITION)
POLICY_FILE = ECS_DIR / "iam-policy.json"
REGION = "us-east-1"
ACCOUNT = "123456789012"

# The image's /entrypoint.sh (entrypoint.sh): these first arguments (or any starting with "-") run
# `ztr "$@"`, a leading "--" or anything else runs `ztr-run -- "$@"`; with ZTR_WAIT_FOR_FILE set it
# waits (ZTR_WAIT_TIMEOUT: 45, 45s, 5m, 1h) for the env file, sources it and execs the app itself.
ENTRYPOINT = "/entrypoint.sh"
ENTRYPOINT_COMMANDS = ("init", "watch", "run", "check", "iam-policy", "demo", "plan")
ENTRYPOINT_VARS = frozenset({"ZTR_WAIT_FOR_FILE", "ZTR_WAIT_TIMEOUT"})
WAIT_TIMEOUT_RE = re.compile(r"\d+[smh]?")
IMAGE_UID = 65532  # the ztr image's USER

FARGATE_STOP_TIMEOUT = (2, 120)  # seconds; the default is 30
STOP_MARGIN_SECONDS = 5  # ztr-run needs its grace period plus time to exit before ECS's SIGKILL
# What Fargate rejects in a task definition (the subset these files could plausibly use).
FARGATE_UNSUPPORTED_LINUX = ("tmpfs", "devices", "sharedMemorySize", "swappiness", "maxSwap")


def fargate_memory_choices(cpu: int) -> frozenset[int]:
    """Valid task memory (MiB) for a Fargate task cpu value: the table in RegisterTaskDefinition's
    documentation (botocore's ecs service model, ``memory``)."""
    gib = 1024
    table = {
        256: [512, 1 * gib, 2 * gib],
        512: [n * gib for n in range(1, 5)],
        1024: [n * gib for n in range(2, 9)],
        2048: [n * gib for n in range(4, 17)],
        4096: [n * gib for n in range(8, 31)],
        8192: [n * gib for n in range(16, 61, 4)],
        16384: [n * gib for n in range(32, 121, 8)],
    }
    return frozenset(table.get(cpu, ()))


# -- loading --------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ECS_DIR / name).read_text())
    return data


@functools.cache
def register_shape() -> StructureShape:
    model = get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    assert isinstance(shape, StructureShape)
    return shape


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("environment", [])}


def containers_of(td: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in td.get("containerDefinitions", [])}


def is_fargate(td: dict[str, Any]) -> bool:
    return "FARGATE" in td.get("requiresCompatibilities", [])


# -- check 1: botocore's own input shape ----------------------------------------------------


def shape_problems(td: dict[str, Any]) -> list[str]:
    report = ParamValidator().validate(td, register_shape())
    return [report.generate_report()] if report.has_errors() else []


# -- check 2: enum values (ParamValidator ignores them) -------------------------------------


def _walk_enums(value: Any, shape: Shape, where: str) -> Iterator[str]:
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                yield from _walk_enums(item, shape.members[key], f"{where}.{key}")
    elif isinstance(shape, ListShape) and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_enums(item, shape.member, f"{where}[{index}]")
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_enums(key, shape.key, f"{where} key {key!r}")
            yield from _walk_enums(item, shape.value, f"{where}[{key!r}]")
    elif isinstance(shape, StringShape) and shape.enum and isinstance(value, str):
        if value not in shape.enum:
            yield f"{where}: {value!r} is not one of {', '.join(shape.enum)}"


def enum_problems(td: dict[str, Any]) -> list[str]:
    return list(_walk_enums(td, register_shape(), "taskDefinition"))


# -- check 3: cross-field rules -------------------------------------------------------------


def _units(raw: Any, unit_words: tuple[str, ...]) -> int | None:
    """``"512"``, ``512``, ``"1 vCPU"`` or ``"2 GB"`` as CPU units or MiB."""
    text = str(raw).strip().lower()
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(" + "|".join(unit_words) + ")", text)
    return int(float(match[1]) * 1024) if match else None


def _fargate_problems(td: dict[str, Any]) -> Iterator[str]:
    if td.get("networkMode") != "awsvpc":
        yield f"Fargate needs networkMode awsvpc, not {td.get('networkMode')!r}"
    cpu = _units(td.get("cpu"), ("vcpu",))
    memory = _units(td.get("memory"), ("gb",))
    if cpu is None or memory is None:
        yield "Fargate needs task-level cpu and memory"
    elif memory not in fargate_memory_choices(cpu):
        yield f"Fargate has no task size cpu={cpu} memory={memory}"
    for volume in td.get("volumes", []):
        if "dockerVolumeConfiguration" in volume:
            yield f"volume {volume['name']}: Fargate does not support Docker volumes"
        if volume.get("host", {}).get("sourcePath"):
            yield f"volume {volume['name']}: Fargate does not support host sourcePath"
    hard_total = 0
    for container in td.get("containerDefinitions", []):
        name = container["name"]
        linux = container.get("linuxParameters", {})
        for key in FARGATE_UNSUPPORTED_LINUX:
            if key in linux:
                yield f"{name}: linuxParameters.{key} is not supported on Fargate"
        if [cap for cap in linux.get("capabilities", {}).get("add", []) if cap != "SYS_PTRACE"]:
            yield f"{name}: Fargate can only add the SYS_PTRACE capability"
        if container.get("privileged"):
            yield f"{name}: privileged containers are not supported on Fargate"
        low, high = FARGATE_STOP_TIMEOUT
        if "stopTimeout" in container and not low <= container["stopTimeout"] <= high:
            yield f"{name}: Fargate stopTimeout must be {low}-{high} s"
        hard_total += container.get("memory", 0)
    if memory is not None and hard_total > memory:
        yield f"container memory limits add up to {hard_total} MiB, more than the task's {memory}"


def _log_problems(td: dict[str, Any], container: dict[str, Any]) -> Iterator[str]:
    name = container["name"]
    log = container.get("logConfiguration")
    if log is None:
        yield f"{name}: no logConfiguration (use awslogs)"
        return
    if log.get("logDriver") != "awslogs":
        yield f"{name}: logDriver is {log.get('logDriver')!r}, these manifests use awslogs"
        return
    options = log.get("options", {})
    needed = ["awslogs-group", "awslogs-region"] + (["awslogs-stream-prefix"] if is_fargate(td) else [])
    for option in needed:
        if not options.get(option):
            yield f"{name}: awslogs needs the {option} option"
    if not td.get("executionRoleArn"):
        yield f"{name}: awslogs needs an executionRoleArn (the agent writes the logs)"


def rule_problems(td: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    containers = containers_of(td)
    volumes = {v["name"]: v for v in td.get("volumes", [])}
    if len(containers) != len(td.get("containerDefinitions", [])):
        problems.append("container names are not unique")
    if not any(c.get("essential", True) for c in containers.values()):
        problems.append("no essential container: the task would have nothing to keep it running")
    if is_fargate(td):
        problems.extend(_fargate_problems(td))
    for name, container in containers.items():
        for dependency in container.get("dependsOn", []):
            target_name, condition = dependency.get("containerName"), dependency.get("condition")
            target = containers.get(target_name)
            if target is None or target_name == name:
                problems.append(f"{name}: dependsOn names unknown container {target_name!r}")
                continue
            if condition in ("SUCCESS", "COMPLETE") and target.get("essential", True):
                problems.append(f"{name}: dependsOn {condition} needs {target_name} to be non-essential "
                                "(essential: false)")
            if condition == "HEALTHY" and "healthCheck" not in target:
                problems.append(f"{name}: dependsOn HEALTHY needs a healthCheck on {target_name}")
        for mount in container.get("mountPoints", []):
            if mount.get("sourceVolume") not in volumes:
                problems.append(f"{name}: mountPoint names unknown volume {mount.get('sourceVolume')!r}")
        if "ecr" in container.get("image", "") and not td.get("executionRoleArn"):
            problems.append(f"{name}: pulling from ECR needs an executionRoleArn")
        problems.extend(_log_problems(td, container))
    return problems


# -- check 4: ztr's own parser, and how the containers fit together -------------------------


def ztr_argv(container: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The ztr command and its arguments this container runs, or None (not ztr, or wait mode).

    A container without an entryPoint uses its image's, which for these images is /entrypoint.sh.
    """
    argv = list(container.get("entryPoint") or [ENTRYPOINT]) + list(container.get("command", []))
    program, args = os.path.basename(argv[0]), argv[1:]
    if argv[0] == ENTRYPOINT:
        if env_of(container).get("ZTR_WAIT_FOR_FILE"):
            return None
        if args[:1] == ["--"]:
            return "run", args
        if args and (args[0] in ENTRYPOINT_COMMANDS or args[0].startswith("-")):
            return args[0], args[1:]
        return "run", ["--", *args]
    if program == "ztr" and args:
        return args[0], args[1:]
    if program == "ztr-run":
        return "run", args
    return None


def ztr_config_of(container: dict[str, Any]) -> ztr_config.Config | None:
    """Resolve the container's ztr configuration exactly as the CLI does (raises ConfigError)."""
    invocation = ztr_argv(container)
    if invocation is None:
        return None
    command, args = invocation
    return cli.resolve_config(command, args, env_of(container))


def _volume_path(container: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(volume name, path inside it) for a path in this container, or None if not on a volume."""
    best: tuple[str, str] | None = None
    best_len = -1
    for mount in container.get("mountPoints", []):
        root = mount["containerPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and len(root) > best_len:
            best, best_len = (mount["sourceVolume"], path[len(root):].lstrip("/")), len(root)
    return best


def _is_tmpfs_volume(volume: dict[str, Any]) -> bool:
    options = volume.get("dockerVolumeConfiguration", {}).get("driverOpts", {})
    return bool(options.get("type") == "tmpfs")


def _env_problems(name: str, container: dict[str, Any], command: str | None) -> Iterator[str]:
    for var, value in env_of(container).items():
        if var.startswith("ZTR_"):
            if var in ENTRYPOINT_VARS:
                continue
            setting = next((s for s in ztr_config.SETTINGS if s.env == var), None)
            if setting is None:
                yield f"{name}: {var} is not a ztr variable (known: config.ENV_VARS)"
                continue
            try:
                setting.parse(value, var)
            except ConfigError as exc:
                yield f"{name}: {exc}"
            if command is None:
                yield f"{name}: {var} is set but the container does not run ztr"
            elif command not in setting.commands:
                yield f"{name}: {var} has no effect on ztr {command}"
        elif value.startswith(refs.URI_SCHEME):
            if command is None:
                yield f"{name}: {var} is an sm:// reference but the container does not run ztr"
            try:
                refs.parse_ref(value, f"{name} {var}")
            except ConfigError as exc:
                yield f"{name}: {exc}"


def _wait_problems(td: dict[str, Any], name: str, container: dict[str, Any],
                   configs: dict[str, ztr_config.Config]) -> Iterator[str]:
    env = env_of(container)
    wait_file = env.get("ZTR_WAIT_FOR_FILE")
    if wait_file is None:
        return
    if not WAIT_TIMEOUT_RE.fullmatch(env.get("ZTR_WAIT_TIMEOUT", "60")):
        yield f"{name}: ZTR_WAIT_TIMEOUT is not 45, 45s, 5m or 1h: {env['ZTR_WAIT_TIMEOUT']!r}"
    where = _volume_path(container, wait_file)
    if where is None:
        yield f"{name}: ZTR_WAIT_FOR_FILE {wait_file} is not on a volume shared with ztr"
        return
    if not any(m["sourceVolume"] == where[0] and m.get("readOnly") for m in container["mountPoints"]):
        yield f"{name}: mount the secrets volume {where[0]} read-only in the app"
    containers = containers_of(td)
    producers = [dep["containerName"] for dep in container.get("dependsOn", [])
                 if dep.get("containerName") in containers
                 and ztr_argv(containers[dep["containerName"]]) is not None]
    if not producers:
        yield f"{name}: waits for {wait_file} but does not dependsOn the ztr container writing it"
    for producer in producers:
        config = configs.get(producer)
        if config is None:
            continue  # its own problem is reported already
        if config.output is None or _volume_path(containers[producer], config.output) != where:
            yield f"{name}: waits for {wait_file} but {producer} writes {config.output} (another file)"
        if config.format != "shell":
            yield f"{name}: the entrypoint sources {wait_file}: {producer} must write --format shell"
        owner = config.owner[0] if config.owner else _uid(containers[producer])
        if _uid(container) != owner and not config.file_mode & 0o004:
            yield (f"{name}: runs as uid {_uid(container)} but {wait_file} is uid {owner}, mode "
                   f"{config.file_mode:04o}: it cannot read it")


def _uid(container: dict[str, Any]) -> int:
    user = container.get("user", str(IMAGE_UID)).split(":")[0]
    return int(user) if user.isdigit() else -1


def _writer_problems(td: dict[str, Any], name: str, container: dict[str, Any],
                     config: ztr_config.Config) -> Iterator[str]:
    volumes = {v["name"]: v for v in td.get("volumes", [])}
    for path in (config.output, config.output_dir):
        if path is None:
            continue
        where = _volume_path(container, path)
        if where is None:
            yield f"{name}: {path} is not on a task volume: no other container can read it"
            continue
        tmpfs = where[0] in volumes and _is_tmpfs_volume(volumes[where[0]])
        if not tmpfs and not config.allow_disk:
            yield (f"{name}: {path} is on volume {where[0]}, not tmpfs: ztr refuses it without "
                   "--allow-disk (on Fargate a task volume is ephemeral disk)")
        if tmpfs and config.allow_disk:
            yield f"{name}: {path} is on a tmpfs volume: drop --allow-disk to keep the tmpfs check"


def _run_problems(td: dict[str, Any], name: str, container: dict[str, Any],
                  config: ztr_config.Config) -> Iterator[str]:
    stop = container.get("stopTimeout", 30)
    if stop < config.grace_period_seconds + STOP_MARGIN_SECONDS:
        yield (f"{name}: stopTimeout {stop} s does not cover ztr's grace period "
               f"{config.grace_period_seconds:g} s plus {STOP_MARGIN_SECONDS} s")
    health = " ".join(container.get("healthCheck", {}).get("command", []))
    for port in re.findall(r":(\d+)/(?:healthz|readyz|metrics)", health):
        if config.metrics_addr is None or int(port) != config.metrics_addr[1]:
            yield f"{name}: healthCheck probes port {port}, ztr serves on {config.metrics_addr}"


def ztr_problems(td: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    configs: dict[str, ztr_config.Config] = {}
    for name, container in containers_of(td).items():
        try:
            config = ztr_config_of(container)
        except ConfigError as exc:
            problems.append(f"{name}: ztr rejects its configuration: {exc}")
            continue
        if config is not None:
            configs[name] = config
        invocation = ztr_argv(container)
        problems.extend(_env_problems(name, container, invocation[0] if invocation else None))
    for name, container in containers_of(td).items():
        problems.extend(_wait_problems(td, name, container, configs))
        config = configs.get(name)
        log_region = container.get("logConfiguration", {}).get("options", {}).get("awslogs-region")
        if config is not None and log_region and config.region != log_region:
            problems.append(f"{name}: ztr reads secrets in {config.region}, the task logs to {log_region}")
        if config is not None and config.command in ("init", "watch"):
            problems.extend(_writer_problems(td, name, container, config))
        if config is not None and config.command == "run":
            problems.extend(_run_problems(td, name, container, config))
    return problems


def all_problems(td: dict[str, Any]) -> list[str]:
    return shape_problems(td) + enum_problems(td) + rule_problems(td) + ztr_problems(td)


# -- the shipped task definitions pass every check ------------------------------------------


@pytest.mark.parametrize("name", TASK_DEFINITIONS)
def test_task_definition_botocore_shape_valid(name: str) -> None:
    assert shape_problems(load(name)) == []


@pytest.mark.parametrize("name", TASK_DEFINITIONS)
def test_task_definition_enum_values_valid(name: str) -> None:
    assert enum_problems(load(name)) == []


@pytest.mark.parametrize("name", TASK_DEFINITIONS)
def test_task_definition_cross_field_rules_hold(name: str) -> None:
    assert rule_problems(load(name)) == []


@pytest.mark.parametrize("name", TASK_DEFINITIONS)
def test_task_definition_ztr_parser_accepts_it(name: str) -> None:
    assert ztr_problems(load(name)) == []


@pytest.mark.parametrize("name", TASK_DEFINITIONS)
def test_task_definition_moto_register_succeeds(name: str) -> None:
    td = load(name)
    with mock_aws():
        ecs = boto3.client("ecs", region_name=REGION)
        registered = ecs.register_task_definition(**td)["taskDefinition"]
        described = ecs.describe_task_definition(taskDefinition=td["family"])["taskDefinition"]
    assert registered["revision"] == 1
    assert registered["taskDefinitionArn"] == described["taskDefinitionArn"]
    assert [c["name"] for c in described["containerDefinitions"]] == list(containers_of(td))


def test_fargate_init_ztr_container_runs_init_with_allow_disk() -> None:
    td = load("fargate-init.json")
    ztr, app = containers_of(td)["ztr"], containers_of(td)["app"]
    config = ztr_config_of(ztr)
    assert config is not None
    assert (config.command, config.output, config.allow_disk) == ("init", "/secrets/app.env", True)
    assert ztr["essential"] is False
    assert app["dependsOn"] == [{"containerName": "ztr", "condition": "SUCCESS"}]
    assert env_of(app)["ZTR_WAIT_FOR_FILE"] == "/secrets/app.env"


def test_ec2_init_secrets_volume_is_tmpfs_without_allow_disk() -> None:
    td = load("ec2-init.json")
    config = ztr_config_of(containers_of(td)["ztr"])
    assert config is not None
    assert config.allow_disk is False
    assert _is_tmpfs_volume({v["name"]: v for v in td["volumes"]}["secrets"])
    assert any("linuxParameters" in c and "tmpfs" in c["linuxParameters"]
               for c in td["containerDefinitions"])


def test_exec_wrapper_app_loads_declared_secrets_under_supervision() -> None:
    app = containers_of(load("exec-wrapper.json"))["app"]
    config = ztr_config_of(app)
    assert config is not None
    assert config.command == "run"
    assert config.command_args == ("node", "dist/index.js")
    assert {b.name: b.ref.optional for b in config.bindings} == {
        "DATABASE_PASSWORD": False, "SESSION_SECRET": False,
        "REDIS_PASSWORD": True, "JWT_SECRET": True,
    }
    assert config.grace_period_seconds + STOP_MARGIN_SECONDS <= app["stopTimeout"] <= 120


# -- every check rejects a deliberately broken copy -----------------------------------------


def _container(td: dict[str, Any], name: str) -> dict[str, Any]:
    return containers_of(td)[name]


def _set_env(td: dict[str, Any], container: str, var: str, value: str) -> None:
    env = _container(td, container).setdefault("environment", [])
    env[:] = [e for e in env if e["name"] != var] + [{"name": var, "value": value}]


def _replace_arg(td: dict[str, Any], container: str, old: str, new: list[str]) -> None:
    command = _container(td, container)["command"]
    index = command.index(old)
    command[index:index + 1] = new


def _complete_on_default_essential(td: dict[str, Any]) -> None:
    del _container(td, "ztr")["essential"]  # essential defaults to true
    _container(td, "app")["dependsOn"][0]["condition"] = "COMPLETE"


def _healthy_without_healthcheck(td: dict[str, Any]) -> None:
    _container(td, "ztr")["essential"] = True
    _container(td, "app")["dependsOn"][0]["condition"] = "HEALTHY"


Breakage = Callable[[dict[str, Any]], object]
BROKEN: list[tuple[str, str, Breakage, str]] = [
    # shape (botocore ParamValidator)
    ("unknown-key", "fargate-init.json",
     lambda td: td.__setitem__("containerDefinition", []), "Unknown parameter"),
    ("essential-as-string", "fargate-init.json",
     lambda td: _container(td, "ztr").__setitem__("essential", "false"), "Invalid type"),
    ("missing-family", "ec2-init.json", lambda td: td.pop("family"), "Missing required parameter"),
    # enums
    ("network-mode", "ec2-init.json", lambda td: td.__setitem__("networkMode", "vpc"), "networkMode"),
    ("compatibility", "fargate-init.json",
     lambda td: td.__setitem__("requiresCompatibilities", ["LAMBDA"]), "requiresCompatibilities"),
    ("depends-on-condition", "fargate-init.json",
     lambda td: _container(td, "app")["dependsOn"][0].__setitem__("condition", "DONE"), "condition"),
    ("log-driver", "exec-wrapper.json",
     lambda td: _container(td, "app")["logConfiguration"].__setitem__("logDriver", "cloudwatch"),
     "logDriver"),
    ("port-protocol", "exec-wrapper.json",
     lambda td: _container(td, "app")["portMappings"][0].__setitem__("protocol", "http"), "protocol"),
    ("cpu-architecture", "fargate-init.json",
     lambda td: td["runtimePlatform"].__setitem__("cpuArchitecture", "AMD64"), "cpuArchitecture"),
    # cross-field rules
    ("success-on-essential", "fargate-init.json",
     lambda td: _container(td, "ztr").__setitem__("essential", True), "non-essential"),
    ("complete-on-default-essential", "ec2-init.json",
     _complete_on_default_essential, "non-essential"),
    ("depends-on-unknown", "fargate-init.json",
     lambda td: _container(td, "app")["dependsOn"][0].__setitem__("containerName", "zrt"),
     "unknown container"),
    ("healthy-without-healthcheck", "ec2-init.json", _healthy_without_healthcheck, "healthCheck"),
    ("fargate-cpu-memory", "fargate-init.json", lambda td: td.__setitem__("memory", "8192"), "task size"),
    ("fargate-cpu-odd", "exec-wrapper.json", lambda td: td.__setitem__("cpu", "384"), "task size"),
    ("fargate-bridge", "fargate-init.json", lambda td: td.__setitem__("networkMode", "bridge"), "awsvpc"),
    ("fargate-tmpfs", "fargate-init.json",
     lambda td: _container(td, "app").setdefault("linuxParameters", {}).__setitem__(
         "tmpfs", [{"containerPath": "/secrets", "size": 1}]), "tmpfs"),
    ("fargate-docker-volume", "fargate-init.json",
     lambda td: td["volumes"][0].__setitem__("dockerVolumeConfiguration", {"scope": "task"}),
     "Docker volumes"),
    ("fargate-stop-timeout", "exec-wrapper.json",
     lambda td: _container(td, "app").__setitem__("stopTimeout", 300), "stopTimeout"),
    ("unknown-volume", "ec2-init.json",
     lambda td: _container(td, "app")["mountPoints"][0].__setitem__("sourceVolume", "secret"),
     "unknown volume"),
    ("no-essential", "exec-wrapper.json",
     lambda td: _container(td, "app").__setitem__("essential", False), "no essential"),
    ("awslogs-region", "ec2-init.json",
     lambda td: _container(td, "ztr")["logConfiguration"]["options"].pop("awslogs-region"),
     "awslogs-region"),
    ("no-execution-role", "fargate-init.json", lambda td: td.pop("executionRoleArn"), "executionRoleArn"),
    # ztr's own parser and how ztr fits the task
    ("ztr-unknown-flag", "fargate-init.json",
     lambda td: _replace_arg(td, "ztr", "--allow-disk", ["--allow-disc"]), "ztr rejects"),
    ("ztr-preset-typo", "ec2-init.json",
     lambda td: _replace_arg(td, "ztr", "zero-to-running", ["zero-to-runing"]), "ztr rejects"),
    ("ztr-unknown-variable", "fargate-init.json",
     lambda td: _set_env(td, "ztr", "ZTR_TIMOUT", "60s"), "not a ztr variable"),
    ("ztr-bad-duration", "ec2-init.json",
     lambda td: _set_env(td, "ztr", "ZTR_TIMEOUT", "soon"), "not a duration"),
    ("ztr-variable-no-effect", "fargate-init.json",
     lambda td: _set_env(td, "ztr", "ZTR_GRACE_PERIOD", "25s"), "no effect"),
    ("ztr-bad-reference", "exec-wrapper.json",
     lambda td: _set_env(td, "app", "JWT_SECRET", "sm://production/zero-to-running/jwt-secret?opt"),
     "unknown option"),
    ("ztr-reference-without-ztr", "fargate-init.json",
     lambda td: _set_env(td, "app", "JWT_SECRET", "sm://production/zero-to-running/jwt-secret"),
     "does not run ztr"),
    ("fargate-without-allow-disk", "fargate-init.json",
     lambda td: _replace_arg(td, "ztr", "--allow-disk", []), "--allow-disk"),
    ("tmpfs-with-allow-disk", "ec2-init.json",
     lambda td: _container(td, "ztr")["command"].append("--allow-disk"), "drop --allow-disk"),
    ("output-off-volume", "ec2-init.json",
     lambda td: _replace_arg(td, "ztr", "/secrets/app.env", ["/tmp/app.env"]), "not on a task volume"),
    ("wait-for-other-file", "fargate-init.json",
     lambda td: _set_env(td, "app", "ZTR_WAIT_FOR_FILE", "/secrets/other.env"), "another file"),
    ("wait-timeout-duration", "ec2-init.json",
     lambda td: _set_env(td, "app", "ZTR_WAIT_TIMEOUT", "half a minute"), "ZTR_WAIT_TIMEOUT"),
    ("wait-for-dotenv", "fargate-init.json",
     lambda td: _container(td, "ztr")["command"].extend(["--format", "dotenv"]), "--format shell"),
    ("wait-reader-other-uid", "ec2-init.json",
     lambda td: _container(td, "app").__setitem__("user", "1000"), "cannot read"),
    ("wait-without-depends-on", "fargate-init.json",
     lambda td: _container(td, "app").pop("dependsOn"), "does not dependsOn"),
    ("app-mount-writable", "ec2-init.json",
     lambda td: _container(td, "app")["mountPoints"][0].__setitem__("readOnly", False), "read-only"),
    ("stop-timeout-below-grace", "exec-wrapper.json",
     lambda td: _container(td, "app").__setitem__("stopTimeout", 25), "grace period"),
    ("grace-above-stop-timeout", "exec-wrapper.json",
     lambda td: _set_env(td, "app", "ZTR_GRACE_PERIOD", "60s"), "grace period"),
    ("region-mismatch", "fargate-init.json",
     lambda td: _set_env(td, "ztr", "AWS_REGION", "eu-west-1"), "reads secrets in eu-west-1"),
    ("healthcheck-wrong-port", "exec-wrapper.json",
     lambda td: _set_env(td, "app", "ZTR_METRICS_ADDR", "0.0.0.0:9200"), "healthCheck probes"),
]


@pytest.mark.parametrize(("case", "name", "breakage", "expected"), BROKEN,
                         ids=[case[0] for case in BROKEN])
def test_checks_broken_copy_rejected(case: str, name: str, breakage: Breakage, expected: str) -> None:
    td = copy.deepcopy(load(name))
    assert all_problems(td) == [], f"{name} must be clean before {case} breaks it"
    breakage(td)
    problems = all_problems(td)
    assert any(expected in problem for problem in problems), problems


def test_fargate_memory_table_matches_documented_examples() -> None:
    assert fargate_memory_choices(256) == {512, 1024, 2048}
    assert 3072 in fargate_memory_choices(512)
    assert 5120 not in fargate_memory_choices(512)
    assert 30720 in fargate_memory_choices(4096)
    assert 31744 not in fargate_memory_choices(4096)
    assert 20480 in fargate_memory_choices(8192)
    assert 18432 not in fargate_memory_choices(8192)
    assert fargate_memory_choices(128) == frozenset()


# -- the task role's policy ------------------------------------------------------------------


def policy() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(POLICY_FILE.read_text())
    return data


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def declared_secret_ids() -> set[str]:
    """Every secret the shipped task definitions load (preset names and sm:// references)."""
    ids: set[str] = set()
    for name in TASK_DEFINITIONS:
        for container in load(name)["containerDefinitions"]:
            config = ztr_config_of(container)
            if config is not None:
                ids.update(binding.ref.secret_id for binding in config.bindings)
    return ids


def arn_for(secret_id: str) -> str:
    """What a real secret ARN looks like: the name plus six random characters."""
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-AbC123"


def policy_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if doc.get("Version") != "2012-10-17":
        problems.append(f"Version must be 2012-10-17, not {doc.get('Version')!r}")
    grants: dict[str, list[str]] = {}
    for statement in _as_list(doc.get("Statement", [])):
        if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
            problems.append(f"statement {statement.get('Sid')}: only plain Allow statements")
            continue
        resources = _as_list(statement.get("Resource", []))
        for action in _as_list(statement.get("Action", [])):
            if "*" in action or "?" in action:
                problems.append(f"wildcard action {action}")
            grants.setdefault(action, []).extend(resources)
            if action == "kms:Decrypt":
                via = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                if via != f"secretsmanager.{REGION}.amazonaws.com":
                    problems.append("kms:Decrypt needs a kms:ViaService condition for Secrets Manager")
                if "*" in resources:
                    problems.append("kms:Decrypt on * instead of the key's ARN")
    allowed = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret",
               "secretsmanager:BatchGetSecretValue", "kms:Decrypt"}
    problems.extend(f"{action} is not on ztr's fetch path" for action in sorted(set(grants) - allowed))
    if grants.get("secretsmanager:BatchGetSecretValue") != ["*"]:
        problems.append("BatchGetSecretValue has no resource-level permissions: grant it on * only")
    prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:production/zero-to-running/"
    for action in ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"):
        patterns = grants.get(action, [])
        problems.extend(f"{action} on {pattern}, outside {prefix}" for pattern in patterns
                        if not pattern.startswith(prefix))
        for secret_id in sorted(declared_secret_ids()):
            if not any(fnmatch.fnmatchcase(arn_for(secret_id), p) for p in patterns):
                problems.append(f"{action} does not cover {secret_id}, which a task definition loads")
    return problems


def test_iam_policy_least_privilege_rules_hold() -> None:
    assert policy_problems(policy()) == []


def test_iam_policy_moto_create_policy_accepts_it() -> None:
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        created = iam.create_policy(PolicyName="ztr-task-role", PolicyDocument=POLICY_FILE.read_text())
    assert created["Policy"]["Arn"].endswith(":policy/ztr-task-role")


def _statement(doc: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in doc["Statement"] if s["Sid"] == sid)


POLICY_BROKEN: list[tuple[str, Breakage, str]] = [
    ("version", lambda doc: doc.__setitem__("Version", "2008-10-17"), "Version"),
    ("wildcard-action", lambda doc: _statement(doc, "ReadDeclaredSecrets").__setitem__(
        "Action", "secretsmanager:*"), "wildcard action"),
    ("list-secrets", lambda doc: _statement(doc, "BatchFetch").__setitem__(
        "Action", ["secretsmanager:BatchGetSecretValue", "secretsmanager:ListSecrets"]),
     "not on ztr's fetch path"),
    ("batch-on-arn", lambda doc: _statement(doc, "BatchFetch").__setitem__(
        "Resource", _statement(doc, "ReadDeclaredSecrets")["Resource"]), "on * only"),
    ("no-via-service", lambda doc: _statement(doc, "DecryptWithCustomerManagedKeys").pop("Condition"),
     "kms:ViaService"),
    ("outside-prefix", lambda doc: _statement(doc, "ReadDeclaredSecrets")["Resource"].append(
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:production/*"), "outside"),
    ("missing-secret", lambda doc: _statement(doc, "ReadDeclaredSecrets")["Resource"].pop(),
     "does not cover"),
]


@pytest.mark.parametrize(("case", "breakage", "expected"), POLICY_BROKEN,
                         ids=[case[0] for case in POLICY_BROKEN])
def test_iam_policy_broken_copy_rejected(case: str, breakage: Breakage, expected: str) -> None:
    doc = copy.deepcopy(policy())
    breakage(doc)
    problems = policy_problems(doc)
    assert any(expected in problem for problem in problems), (case, problems)


def test_iam_policy_moto_rejects_malformed_copy() -> None:
    doc = copy.deepcopy(policy())
    _statement(doc, "BatchFetch")["Action"] = "secretsmanager BatchGetSecretValue"
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
            iam.create_policy(PolicyName="broken", PolicyDocument=json.dumps(doc))


def fargate_mount_paths() -> set[str]:
    return {m["containerPath"] for c in load("fargate-init.json")["containerDefinitions"]
            for m in c.get("mountPoints", [])}


def test_dockerfile_fargate_secrets_path_declared_volume() -> None:
    """Fargate bind mounts are root-owned 0755 unless the image declares the path as a VOLUME
    (ECS copies the image's directory, owner included): the non-root ztr needs that to write."""
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile yet")
    assert dockerfile_problems(dockerfile.read_text(), fargate_mount_paths()) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("USER 65532\n", 2),
    ('RUN install -d -o 65532 -g 65532 -m 0700 /secrets\nUSER 65532\n', 1),
    ('RUN install -d -o 65532 -g 65532 -m 0700 /secrets\nVOLUME ["/secrets"]\n', 0),
    ('RUN mkdir /secrets && chown 65532:65532 /secrets\nVOLUME /secrets\n', 0),
], ids=["neither", "no-volume", "install", "chown"])
def test_dockerfile_check_snippet_counts_problems(text: str, expected: int) -> None:
    assert len(dockerfile_problems(text, {"/secrets"})) == expected


def test_iam_policy_matches_ztr_iam_policy_output(capsys: pytest.CaptureFixture[str]) -> None:
    """ecs/iam-policy.json is what `ztr iam-policy` prints for the preset and the key, with the
    ARNs' random suffix as ``-??????`` so one file fits every account's secrets."""
    shipped = policy()
    key = _statement(shipped, "DecryptWithCustomerManagedKeys")["Resource"]
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name=REGION)
        for secret_id in sorted(declared_secret_ids()):
            sm.create_secret(Name=secret_id, SecretString="unused")
        capsys.readouterr()
        code = cli.main(["iam-policy", "--preset", "zero-to-running", "--region", REGION,
                         "--kms-key", key])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["Version"] == shipped["Version"]
    assert [s["Sid"] for s in printed["Statement"]] == [s["Sid"] for s in shipped["Statement"]]
    for ours in shipped["Statement"]:
        theirs = _statement(printed, ours["Sid"])
        assert sorted(_as_list(theirs["Action"])) == sorted(_as_list(ours["Action"]))
        assert theirs.get("Condition") == ours.get("Condition")
        patterns = _as_list(ours["Resource"])
        for resource in _as_list(theirs["Resource"]):
            assert any(fnmatch.fnmatchcase(resource, p) for p in patterns), resource
        assert len(_as_list(theirs["Resource"])) == len(patterns)


def dockerfile_problems(text: str, paths: set[str]) -> list[str]:
    volumes = " ".join(re.findall(r"^\s*VOLUME\s+(.+)$", text, re.MULTILINE))
    problems = []
    for path in sorted(paths):
        if path not in volumes:
            problems.append(f'Dockerfile needs VOLUME ["{path}"] (a Fargate task volume there is root-owned)')
        if not re.search(rf"^.*{IMAGE_UID}.*{re.escape(path)}\b.*$", text, re.MULTILINE):
            problems.append(f"Dockerfile needs {path} created and owned by {IMAGE_UID} before VOLUME")
    return problems


# -- push rotation (issue 12) ----------------------------------------------------------------


def test_events_task_definition_is_exec_wrapper_plus_events_variables() -> None:
    """Only the family and two variables differ, so the variant cannot drift from exec-wrapper."""
    events, plain = load(EVENTS_TASK_DEFINITION), load("exec-wrapper.json")
    app = containers_of(events)["app"]
    assert env_of(app)["ZTR_REFRESH_INTERVAL"] == "1h"
    assert events["family"] == plain["family"] + "-events"
    events["family"] = plain["family"]
    app["environment"] = [item for item in app["environment"] if item["name"] != "ZTR_EVENTS_TOPIC"]
    for item in app["environment"]:
        if item["name"] == "ZTR_REFRESH_INTERVAL":
            item["value"] = env_of(containers_of(plain)["app"])["ZTR_REFRESH_INTERVAL"]
    assert events == plain


def test_events_task_definition_checks_pass() -> None:
    from sidecar.events import validate_topic_arn

    td = load(EVENTS_TASK_DEFINITION)
    assert shape_problems(td) + enum_problems(td) + rule_problems(td) == []
    topic = env_of(containers_of(td)["app"])["ZTR_EVENTS_TOPIC"]
    assert validate_topic_arn(topic) == topic
    assert ztr_problems(td) == []
