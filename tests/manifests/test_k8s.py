"""Kubernetes manifests in k8s/: yamllint, kubernetes-validate --strict, and what no schema checks.

kubernetes-validate checks structure only (``restartPolicy: Sometimes`` passes it), so the rules that
make the three patterns work are checked here against ztr's own parser: restartPolicy, the shared
memory-backed emptyDir, probes on real endpoints and the configured port, every ztr argument and
ZTR_* variable, who reads the env file, security context and memory. Each rule is proven by a
deliberately broken copy that it must reject.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate_utils

from sidecar import cli
from sidecar import config as ztr_config
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
BIN = Path(sys.executable).parent
SERVICEMONITOR_COMPONENT = K8S_DIR / "components" / "servicemonitor"
# What a user applies: a kustomization directory, plus components added to it.
BUNDLES: dict[str, tuple[Path, tuple[Path, ...]]] = {
    "native-sidecar": (K8S_DIR, ()),
    "native-sidecar-servicemonitor": (K8S_DIR, (SERVICEMONITOR_COMPONENT,)),
    "init-container": (K8S_DIR / "variants" / "init-container", ()),
    "exec-wrapper": (K8S_DIR / "variants" / "exec-wrapper", ()),
}
# Push rotation: the native sidecar plus ZTR_EVENTS_TOPIC, under every semantic check.
EVENTS_VARIANT = K8S_DIR / "variants" / "events"
BUNDLES["native-sidecar-events"] = (EVENTS_VARIANT, ())
MIN_KUBERNETES = "1.29.0"  # native sidecars are on by default from 1.29
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate_utils.latest_version())
KUSTOMIZE_KINDS = frozenset({"Kustomization", "Component"})
KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "components", "images"})
CRD_API_GROUPS = ("monitoring.coreos.com/",)  # no schema ships with kubernetes-validate

# The image's /entrypoint.sh (entrypoint.sh): these first arguments (or any starting with "-") run
# `ztr "$@"`, a leading "--" or anything else runs `ztr-run -- "$@"`; with ZTR_WAIT_FOR_FILE set it
# waits (ZTR_WAIT_TIMEOUT: 45, 45s, 5m, 1h) for the env file, sources it and execs the app itself.
ENTRYPOINT = "/entrypoint.sh"
ENTRYPOINT_COMMANDS = ("init", "watch", "run", "check", "iam-policy", "demo", "plan")
ENTRYPOINT_VARS = frozenset({"ZTR_WAIT_FOR_FILE", "ZTR_WAIT_TIMEOUT"})
WAIT_TIMEOUT_RE = re.compile(r"\d+[smh]?")
ZTR_IMAGE = "ztr"
IMAGE_UID = 65532  # the ztr image's USER

ZTR_ENDPOINTS = frozenset({"/metrics", "/healthz", "/readyz"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})  # unreachable for kubelet and Prometheus
# IRSA, EKS Pod Identity and the API token are mounted below /var/run/secrets (= /run/secrets where
# /var/run is a link to /run): a volume there or above it breaks them (kubernetes/kubernetes#65835).
TOKEN_DIRS = (PurePosixPath("/run/secrets"), PurePosixPath("/var/run/secrets"))
# Peak RSS of `ztr watch`, 4 secrets of 64 KiB, metrics on (k8s/deployment.yaml says how).
MEASURED_PEAK_RSS_MIB = 44.6
DEFAULT_TERMINATION_GRACE_SECONDS = 30
DEFAULT_PERIOD_SECONDS = 10
DEFAULT_FAILURE_THRESHOLD = 3
SETTINGS_BY_ENV = {setting.env: setting for setting in ztr_config.SETTINGS}

Doc = dict[str, Any]


# -- loading -------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Doc]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def kustomization(directory: Path) -> Doc:
    (doc,) = load_docs(directory / "kustomization.yaml")
    return doc


def bundle_docs(directory: Path, components: tuple[Path, ...] = ()) -> list[Doc]:
    """The objects a kustomization builds. Its transformers are not applied: the kustomizations use
    only resources, components and images (test_kustomizations_fields_are_supported), and the
    rendered output is compared with `kubectl kustomize` where kubectl is installed."""
    spec = kustomization(directory)
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += bundle_docs(path) if path.is_dir() else load_docs(path)
    for component in [*(directory / c for c in spec.get("components", [])), *components]:
        docs += bundle_docs(component)
    return docs


def bundle(name: str) -> list[Doc]:
    directory, components = BUNDLES[name]
    return bundle_docs(directory, components)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.is_file())


def api_object_files() -> list[Path]:
    """Files of Kubernetes API objects that kubernetes-validate has schemas for."""
    return [
        path
        for path in manifest_files()
        if all(
            doc["kind"] not in KUSTOMIZE_KINDS and not doc["apiVersion"].startswith(CRD_API_GROUPS)
            for doc in load_docs(path)
        )
    ]


# -- reading a pod -------------------------------------------------------------------------------


def where(doc: Doc) -> str:
    return f"{doc['kind'].lower()}/{doc['metadata']['name']}"


def pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(where, pod metadata, pod spec) for every pod the objects create."""
    for doc in docs:
        kind = doc["kind"]
        if kind == "Pod":
            yield where(doc), doc.get("metadata", {}), doc["spec"]
        elif kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            yield where(doc), template.get("metadata", {}), template["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = doc["spec"]["template"]
            yield where(doc), template.get("metadata", {}), template["spec"]


def containers(spec: Doc) -> Iterator[tuple[str, Doc, bool]]:
    """(label, container, is_init) for init containers then containers."""
    for field, is_init in (("initContainers", True), ("containers", False)):
        for container in spec.get(field, []):
            yield f"{field}[{container['name']}]", container, is_init


def image_name(image: str) -> str:
    """``registry/path/ztr:1.2@sha256:...`` -> ``ztr``."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def env_names(container: Doc) -> list[str]:
    return [item["name"] for item in container.get("env", [])]


def literal_env(container: Doc) -> dict[str, str]:
    """The variables with a literal value (valueFrom is resolved only in the cluster)."""
    return {item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item}


def uses_entrypoint(container: Doc) -> bool:
    command = container.get("command") or []
    return command == [ENTRYPOINT] or (not command and image_name(container.get("image", "")) == ZTR_IMAGE)


def waits_for_file(container: Doc) -> bool:
    return uses_entrypoint(container) and bool(literal_env(container).get("ZTR_WAIT_FOR_FILE"))


def ztr_invocation(container: Doc) -> tuple[str, list[str]] | None:
    """The ztr command and its arguments in a container, dispatched as /entrypoint.sh would; None
    where ztr does not run (another program, or the entrypoint's wait-and-source mode)."""
    command = list(container.get("command") or [])
    argv = command[1:] + list(container.get("args") or [])
    if command and PurePosixPath(command[0]).name == "ztr":
        return (argv[0], argv[1:]) if argv else ("", [])
    if command and PurePosixPath(command[0]).name == "ztr-run":
        return "run", argv
    if not uses_entrypoint(container) or waits_for_file(container) or not argv:
        return None
    if argv[0] == "--":
        return "run", argv
    if argv[0] in ENTRYPOINT_COMMANDS or argv[0].startswith("-"):
        return argv[0], argv[1:]
    return "run", ["--", *argv]


def probe_window_seconds(probe: Doc) -> float:
    return probe.get("periodSeconds", DEFAULT_PERIOD_SECONDS) * probe.get(
        "failureThreshold", DEFAULT_FAILURE_THRESHOLD
    )


def resolve_port(container: Doc, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return None


_QUANTITY_RE = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?")
_QUANTITY_FACTORS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 10**-3,
    None: 1,
}


def quantity(raw: Any) -> float:
    """A Kubernetes quantity (``96Mi``, ``1Gi``, ``500m``, ``1e3`` aside) as a plain number."""
    match = _QUANTITY_RE.fullmatch(str(raw).strip())
    if not match:
        raise ValueError(f"not a quantity: {raw!r}")
    return float(match[1]) * _QUANTITY_FACTORS[match[2]]


def mount_for(container: Doc, path: str) -> Doc | None:
    """The volumeMount that holds ``path`` (the deepest one)."""
    target = PurePosixPath(path)
    holding = [
        m
        for m in container.get("volumeMounts", [])
        if target == PurePosixPath(m["mountPath"]) or target.is_relative_to(m["mountPath"])
    ]
    return max(holding, key=lambda m: len(PurePosixPath(m["mountPath"]).parts), default=None)


# -- the semantic checks -------------------------------------------------------------------------


def problems(docs: list[Doc]) -> list[str]:
    """Everything wrong with a set of objects that the schema cannot see; [] when all is well."""
    found: list[str] = []
    pods: list[tuple[Doc, set[int]]] = []  # (pod labels, ztr metrics ports reachable in the pod)
    accounts = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ServiceAccount"}
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            found += check_service_account(where(doc), doc)
    for place, meta, spec in pod_templates(docs):
        pod_problems, exposed = check_pod(place, meta, spec)
        found += pod_problems
        pods.append((meta.get("labels", {}), exposed))
        account = spec.get("serviceAccountName")
        if accounts and account not in accounts:
            found.append(f"{place}: serviceAccountName {account!r} is not one of {sorted(accounts)}")
    services = [doc for doc in docs if doc["kind"] == "Service"]
    for service in services:
        found += check_service(where(service), service, pods)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            found += check_service_monitor(where(doc), doc, services)
    return found


def check_service_account(place: str, doc: Doc) -> list[str]:
    arn = doc.get("metadata", {}).get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", arn):
        return [f"{place}: eks.amazonaws.com/role-arn {arn!r} is not an IAM role ARN (IRSA)"]
    return []


def check_pod(place: str, meta: Doc, spec: Doc) -> tuple[list[str], set[int]]:
    found: list[str] = []
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for name, volume in volumes.items():
        if "emptyDir" in volume:
            empty_dir = volume["emptyDir"] or {}
            if empty_dir.get("medium") != "Memory":
                found.append(
                    f"{place}: emptyDir {name} must be medium: Memory (tmpfs), or secrets reach "
                    "the node's disk"
                )
            if "sizeLimit" not in empty_dir:
                found.append(f"{place}: emptyDir {name} needs a sizeLimit (tmpfs counts against memory)")
    writers: dict[str, tuple[str, Doc, ztr_config.Config]] = {}  # output path -> writer
    exposed: set[int] = set()  # metrics ports reachable from outside the pod
    for label, container, is_init in containers(spec):
        here = f"{place} {label}"
        found += check_container(here, container, is_init, spec.get("securityContext", {}))
        invocation = ztr_invocation(container)
        found += check_env_names(here, container, invocation)
        if invocation is None:
            continue
        command, argv = invocation
        try:
            config = cli.resolve_config(command, argv, literal_env(container))
        except (ConfigError, SystemExit) as exc:
            found.append(f"{here}: ztr rejects `ztr {' '.join([command, *argv])}`: {exc}")
            continue
        found += check_ztr(here, container, is_init, config, spec, volumes)
        for path in (config.output, config.output_dir):
            if path:
                writers[path] = (label, container, config)
        if config.metrics_addr and config.metrics_addr[0] not in LOOPBACK_HOSTS:
            exposed.add(config.metrics_addr[1])
    for label, container, _ in containers(spec):
        if waits_for_file(container):
            found += check_reader(f"{place} {label}", container, writers, spec)
    found += check_scrape_annotations(place, meta.get("annotations", {}), exposed)
    return found, exposed


def check_container(here: str, container: Doc, is_init: bool, pod_security: Doc) -> list[str]:
    found: list[str] = []
    if "restartPolicy" in container:
        if not is_init:
            found.append(f"{here}: restartPolicy is allowed only on init containers")
        elif container["restartPolicy"] != "Always":
            found.append(
                f"{here}: restartPolicy {container['restartPolicy']!r}: the only value is Always "
                "(a native sidecar)"
            )
    security = container.get("securityContext", {})

    def effective(key: str) -> Any:
        return security.get(key, pod_security.get(key))

    if effective("runAsNonRoot") is not True:
        found.append(f"{here}: runAsNonRoot must be true")
    if effective("runAsUser") != IMAGE_UID:
        found.append(
            f"{here}: runAsUser must be {IMAGE_UID} (the image's user), not {effective('runAsUser')}"
        )
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append(f"{here}: seccompProfile must be RuntimeDefault")
    if security.get("readOnlyRootFilesystem") is not True:
        found.append(f"{here}: readOnlyRootFilesystem must be true")
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{here}: allowPrivilegeEscalation must be false")
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        found.append(f"{here}: capabilities must drop ALL")
    resources = container.get("resources", {})
    for section, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        if key not in resources.get(section, {}):
            found.append(f"{here}: resources.{section}.{key} is not set")
    for mount in container.get("volumeMounts", []):
        path = PurePosixPath(mount["mountPath"])
        if any(token == path or token.is_relative_to(path) for token in TOKEN_DIRS):
            found.append(
                f"{here}: a volume at {path} hides the IRSA / Pod Identity token mounts below "
                "/var/run/secrets: mount it at a subdirectory such as /run/secrets/ztr"
            )
    return found


def check_env_names(here: str, container: Doc, invocation: tuple[str, list[str]] | None) -> list[str]:
    found: list[str] = []
    for name in env_names(container):
        if not name.startswith("ZTR_"):
            continue
        if name in ENTRYPOINT_VARS:
            if not waits_for_file(container):
                found.append(f"{here}: {name} is read only by {ENTRYPOINT} with ZTR_WAIT_FOR_FILE set")
            elif name == "ZTR_WAIT_TIMEOUT" and not WAIT_TIMEOUT_RE.fullmatch(literal_env(container)[name]):
                found.append(
                    f"{here}: ZTR_WAIT_TIMEOUT {literal_env(container)[name]!r} is not 45, 45s, 5m or 1h"
                )
        elif name not in ztr_config.ENV_VARS:
            found.append(
                f"{here}: {name} is not a ztr variable (known: {', '.join(sorted(ztr_config.ENV_VARS))})"
            )
        elif invocation is None:
            found.append(f"{here}: {name} is set but ztr does not run in this container")
        elif invocation[0] not in SETTINGS_BY_ENV[name].commands:
            found.append(f"{here}: {name} is ignored by `ztr {invocation[0]}`")
    return found


def check_ztr(
    here: str, container: Doc, is_init: bool, config: ztr_config.Config, spec: Doc, volumes: dict[str, Doc]
) -> list[str]:
    found: list[str] = []
    sidecar = is_init and container.get("restartPolicy") == "Always"
    if config.command == "watch" and is_init and not sidecar:
        found.append(f"{here}: `ztr watch` never exits: as an init container it needs restartPolicy: Always")
    if config.command == "init" and sidecar:
        found.append(f"{here}: `ztr init` exits when done: as a sidecar it would be restarted forever")
    # Probes: HTTP, on ztr's endpoints, on its metrics port, which must listen beyond loopback.
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        get = probe.get("httpGet")
        if config.metrics_addr is None:
            found.append(f"{here}: {kind} but --metrics-addr is off: ztr serves no endpoint")
        elif get is None:
            found.append(f"{here}: {kind} must be an httpGet on {sorted(ZTR_ENDPOINTS)}")
        else:
            if get.get("path") not in ZTR_ENDPOINTS:
                found.append(
                    f"{here}: {kind} path {get.get('path')!r} is not a ztr endpoint {sorted(ZTR_ENDPOINTS)}"
                )
            port = resolve_port(container, get.get("port"))
            if port != config.metrics_addr[1]:
                found.append(
                    f"{here}: {kind} port {get.get('port')!r} is not ztr's metrics port "
                    f"{config.metrics_addr[1]}"
                )
            if config.metrics_addr[0] in LOOPBACK_HOSTS:
                found.append(
                    f"{here}: ztr listens on {config.metrics_addr[0]}, which the kubelet's probes "
                    "cannot reach: set ZTR_METRICS_ADDR to 0.0.0.0:PORT"
                )
    for declared in container.get("ports", []):
        if declared.get("name") == "metrics" and (
            config.metrics_addr is None or declared["containerPort"] != config.metrics_addr[1]
        ):
            found.append(
                f"{here}: port metrics {declared['containerPort']} is not where ztr listens "
                f"({config.metrics_addr})"
            )
    if sidecar and config.command == "watch":
        startup = container.get("startupProbe") or {}
        if (startup.get("httpGet") or {}).get("path") != "/readyz":
            found.append(
                f"{here}: a ztr sidecar needs a startupProbe on /readyz, or the app starts "
                "before the first load"
            )
        elif probe_window_seconds(startup) < config.timeout_seconds:
            found.append(
                f"{here}: startupProbe gives up after {probe_window_seconds(startup):g}s, before "
                f"ztr's own load deadline ({config.timeout_seconds:g}s, --timeout)"
            )
        if ((container.get("livenessProbe") or {}).get("httpGet") or {}).get("path") != "/healthz":
            found.append(f"{here}: a ztr sidecar needs a livenessProbe on /healthz")
        if container.get("readinessProbe"):
            found.append(
                f"{here}: no readinessProbe on a ztr sidecar: its readiness is the pod's, and "
                "/readyz turns 503 when refreshes fail for --max-stale"
            )
    # Outputs: on a writable memory-backed emptyDir; the memory limit covers ztr plus the files.
    file_bytes = 0.0
    for path in (config.output, config.output_dir):
        if not path:
            continue
        mount = mount_for(container, path)
        volume = volumes.get(mount["name"], {}) if mount else {}
        if mount is None or "emptyDir" not in volume:
            found.append(f"{here}: {path} is not on an emptyDir volume mounted in this container")
            continue
        if mount.get("readOnly"):
            found.append(f"{here}: ztr writes {path}, but its volume is mounted readOnly")
        file_bytes += quantity((volume["emptyDir"] or {}).get("sizeLimit", 0))
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    needed = MEASURED_PEAK_RSS_MIB * 2**20 + file_bytes
    if limit is not None and quantity(limit) < needed:
        found.append(
            f"{here}: memory limit {limit} is below ztr's measured peak ({MEASURED_PEAK_RSS_MIB} MiB) "
            f"plus its tmpfs files ({file_bytes / 2**20:g} MiB)"
        )
    if config.command == "run":
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS)
        if config.grace_period_seconds >= grace:
            found.append(
                f"{here}: ztr-run's --grace-period ({config.grace_period_seconds:g}s) must be shorter "
                f"than terminationGracePeriodSeconds ({grace}s)"
            )
    return found


def check_reader(
    here: str, container: Doc, writers: dict[str, tuple[str, Doc, ztr_config.Config]], spec: Doc
) -> list[str]:
    """A container in /entrypoint.sh's wait-and-source mode reads the file another one writes."""
    path = literal_env(container)["ZTR_WAIT_FOR_FILE"]
    if path not in writers:
        return [
            f"{here}: ZTR_WAIT_FOR_FILE {path} is not written by ztr in this pod "
            f"(it writes {sorted(writers) or 'nothing'})"
        ]
    label, writer, config = writers[path]
    found: list[str] = []
    if config.format != "shell":
        found.append(f"{here}: {path} is sourced by sh, but {label} writes it as --format {config.format}")
    read_mount, write_mount = mount_for(container, path), mount_for(writer, path)
    if (
        read_mount is None
        or write_mount is None
        or read_mount["name"] != write_mount["name"]
        or (read_mount["mountPath"] != write_mount["mountPath"])
    ):
        found.append(f"{here}: {path} is not on the volume {label} writes it to, at the same path")
    elif not read_mount.get("readOnly"):
        found.append(f"{here}: mount {read_mount['name']} readOnly: only ztr writes the secrets")
    pod_security = spec.get("securityContext", {})

    def uid(target: Doc) -> Any:
        return target.get("securityContext", {}).get("runAsUser", pod_security.get("runAsUser"))

    group_readable = config.file_mode & 0o040 and pod_security.get("fsGroup") is not None
    if uid(container) != uid(writer) and not group_readable:
        found.append(
            f"{here}: runs as {uid(container)} but {label} writes {path} mode "
            f"{config.file_mode:04o} as {uid(writer)}: share the user, or --file-mode 0640 + fsGroup"
        )
    return found


def check_scrape_annotations(place: str, annotations: Doc, exposed: set[int]) -> list[str]:
    if annotations.get("prometheus.io/scrape") != "true":
        return []
    found = []
    port = annotations.get("prometheus.io/port", "")
    if not port.isdigit() or int(port) not in exposed:
        found.append(
            f"{place}: prometheus.io/port {port!r} is not a ztr metrics port reachable in the pod "
            f"({sorted(exposed) or 'none'})"
        )
    if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
        found.append(f"{place}: prometheus.io/path {annotations['prometheus.io/path']!r} is not /metrics")
    return found


def check_service(place: str, service: Doc, pods: list[tuple[Doc, set[int]]]) -> list[str]:
    selector = service["spec"].get("selector", {})
    selected = [exposed for labels, exposed in pods if selector.items() <= labels.items()]
    if not selected:
        return [f"{place}: selector {selector} matches no pod template"]
    ports = set().union(*selected)
    found = []
    for port in service["spec"].get("ports", []):
        target = port.get("targetPort", port["port"])
        if not isinstance(target, int):
            found.append(
                f"{place}: targetPort {target!r}: use the number; Services resolve port names of "
                "native sidecars only from Kubernetes 1.32 (kubernetes/kubernetes#127958)"
            )
        elif target not in ports:
            found.append(f"{place}: targetPort {target} is not a ztr metrics port ({sorted(ports)})")
    return found


def check_service_monitor(place: str, monitor: Doc, services: list[Doc]) -> list[str]:
    selector = monitor["spec"]["selector"].get("matchLabels", {})
    matched = [s for s in services if selector.items() <= s["metadata"].get("labels", {}).items()]
    if not matched:
        return [f"{place}: selector {selector} matches no Service"]
    port_names = {p.get("name") for s in matched for p in s["spec"].get("ports", [])}
    found = []
    for endpoint in monitor["spec"].get("endpoints", []):
        if endpoint.get("port") not in port_names:
            found.append(
                f"{place}: endpoint port {endpoint.get('port')!r} is not a port name of "
                f"{[where(s) for s in matched]}"
            )
        if endpoint.get("path", "/metrics") != "/metrics":
            found.append(f"{place}: endpoint path {endpoint['path']!r} is not /metrics")
    return found


# -- tests: files and schemas --------------------------------------------------------------------


def run_tool(*argv: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_yamllint_k8s_dir_strict_passes() -> None:
    result = run_tool(BIN / "yamllint", "--strict", "-f", "parsable", "-c", K8S_DIR / ".yamllint", K8S_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_duplicate_key_strict_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: 1\na: 2\nb: yes\n")
    result = run_tool(BIN / "yamllint", "--strict", "-f", "parsable", "-c", K8S_DIR / ".yamllint", broken)
    assert result.returncode != 0
    assert "key-duplicates" in result.stdout
    assert "truthy" in result.stdout


def test_kubernetes_validate_versions_minimum_and_newest_shipped() -> None:
    assert "1.29.0" in kubernetes_validate_utils.all_versions()
    assert KUBERNETES_VERSIONS[1] != MIN_KUBERNETES, "kubernetes-validate ships nothing newer than 1.29"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict_api_objects_pass(version: str) -> None:
    files = api_object_files()
    assert len(files) >= 5, files
    result = run_tool(BIN / "kubernetes-validate", "--strict", "-k", version, *files)
    # A kind or apiVersion without a schema is only a WARN (exit 0): that is a typo here.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout, result.stdout


def test_kubernetes_validate_strict_unknown_field_fails(tmp_path: Path) -> None:
    docs = bundle("native-sidecar")
    pod_spec(docs)["initContainers"][0]["restartPolicyy"] = "Always"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    result = run_tool(BIN / "kubernetes-validate", "--strict", "-k", MIN_KUBERNETES, broken)
    assert result.returncode != 0
    assert "restartPolicyy" in result.stdout, result.stdout


def test_kustomizations_fields_are_supported() -> None:
    """bundle_docs() reads resources and components only; a patch or generator would need kustomize."""
    for path in K8S_DIR.rglob("kustomization.yaml"):
        doc = kustomization(path.parent)
        assert doc["kind"] in KUSTOMIZE_KINDS
        assert set(doc) <= KUSTOMIZATION_FIELDS, (
            f"{path}: extend bundle_docs() for {set(doc) - KUSTOMIZATION_FIELDS}"
        )


def test_kustomizations_every_manifest_listed_exactly_once() -> None:
    listed: list[Path] = []
    for path in K8S_DIR.rglob("kustomization.yaml"):
        doc = kustomization(path.parent)
        for entry in [*doc.get("resources", []), *doc.get("components", [])]:
            target = (path.parent / entry).resolve()
            assert target.exists(), f"{path}: {entry} does not exist"
            if target.is_file():
                assert target.parent == path.parent, (
                    f"{path}: kustomize loads files only from its own directory"
                )
                listed.append(target)
    manifests = [p.resolve() for p in manifest_files() if p.name != "kustomization.yaml"]
    assert sorted(listed) == sorted(manifests)


def test_bundles_patterns_are_what_they_say() -> None:
    """The native sidecar, the init container and the exec-wrapper really are those patterns."""

    def ztr_containers(name: str) -> list[tuple[str, bool, str | None, str]]:
        return [
            (label, is_init, c.get("restartPolicy"), (ztr_invocation(c) or ("",))[0])
            for label, c, is_init in containers(pod_spec(bundle(name)))
            if ztr_invocation(c)
        ]

    assert ztr_containers("native-sidecar") == [("initContainers[ztr]", True, "Always", "watch")]
    assert ztr_containers("init-container") == [("initContainers[ztr]", True, None, "init")]
    assert ztr_containers("exec-wrapper") == [("containers[app]", False, None, "run")]
    for name in ("native-sidecar", "init-container"):
        assert [c["name"] for c in pod_spec(bundle(name))["containers"] if waits_for_file(c)] == ["app"]
    kinds = {name: sorted(doc["kind"] for doc in bundle(name)) for name in BUNDLES}
    assert kinds["native-sidecar"] == ["Deployment", "ServiceAccount"]  # ServiceMonitor stays optional
    assert kinds["native-sidecar-servicemonitor"] == [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]


def test_entrypoint_script_dispatch_matches_model() -> None:
    """ztr_invocation() models entrypoint.sh: the same commands, the same two variables."""
    script = (ROOT / "entrypoint.sh").read_text()
    cases = re.search(r"^\s*(init \|[^)]*)\)\s*\n(?:.*\n)*?\s*exec ztr \"\$@\"", script, re.MULTILINE)
    assert cases, 'entrypoint.sh: no `init | watch | ...) exec ztr "$@"` branch'
    assert [word.strip() for word in cases[1].split("|")] == [*ENTRYPOINT_COMMANDS, "-*"]
    for name in ENTRYPOINT_VARS:
        assert name in script


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed"
)
@pytest.mark.parametrize("name", BUNDLES)
def test_kubectl_kustomize_bundle_renders_valid(name: str, tmp_path: Path) -> None:
    """What kustomize really builds: the same objects bundle_docs() sees, valid and problem-free."""
    directory, components = BUNDLES[name]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(directory, overlay)],
                "components": [os.path.relpath(c, overlay) for c in components],
            }
        )
    )
    rendered = run_tool("kubectl", "kustomize", overlay)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert sorted(map(where, docs)) == sorted(map(where, bundle(name)))
    assert problems(docs) == []
    native = "\n---\n".join(yaml.safe_dump(d) for d in docs if not d["apiVersion"].startswith(CRD_API_GROUPS))
    for version in KUBERNETES_VERSIONS:
        result = run_tool(BIN / "kubernetes-validate", "--strict", "-k", version, "-", stdin=native)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARN" not in result.stdout, result.stdout


# -- tests: semantic checks ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLES)
def test_semantic_checks_bundle_as_shipped_pass(name: str) -> None:
    assert problems(bundle(name)) == []


def pod_spec(docs: list[Doc]) -> Doc:
    (spec,) = [spec for _, _, spec in pod_templates(docs)]
    return spec


def container(docs: list[Doc], name: str) -> Doc:
    (found,) = [c for _, c, _ in containers(pod_spec(docs)) if c["name"] == name]
    return found


def set_env(target: Doc, name: str, value: str) -> None:
    target["env"] = [item for item in target.get("env", []) if item["name"] != name]
    target["env"].append({"name": name, "value": value})


def set_arg(target: Doc, flag: str, value: str) -> None:
    args = target["args"]
    args[args.index(flag) + 1] = value


def sidecar(docs: list[Doc]) -> Doc:
    return container(docs, "ztr")


def volume(docs: list[Doc]) -> Doc:
    (found,) = pod_spec(docs)["volumes"]
    return found


def annotations(docs: list[Doc]) -> Doc:
    (found,) = [meta["annotations"] for _, meta, _ in pod_templates(docs)]
    return found


def service(docs: list[Doc]) -> Doc:
    (found,) = [doc for doc in docs if doc["kind"] == "Service"]
    return found


def service_monitor(docs: list[Doc]) -> Doc:
    (found,) = [doc for doc in docs if doc["kind"] == "ServiceMonitor"]
    return found


Breakage = Callable[[list[Doc]], Any]
# (bundle, how to break it, a phrase the problem must contain)
BROKEN: dict[str, tuple[str, Breakage, str]] = {
    "restart-policy-sometimes": (
        "native-sidecar",
        lambda d: sidecar(d).update(restartPolicy="Sometimes"),
        "only value is Always",
    ),
    "restart-policy-on-app": (
        "native-sidecar",
        lambda d: container(d, "app").update(restartPolicy="Always"),
        "only on init",
    ),
    "watch-not-sidecar": ("native-sidecar", lambda d: sidecar(d).pop("restartPolicy"), "never exits"),
    "init-as-sidecar": (
        "init-container",
        lambda d: sidecar(d).update(restartPolicy="Always"),
        "restarted forever",
    ),
    "startup-probe-missing": (
        "native-sidecar",
        lambda d: sidecar(d).pop("startupProbe"),
        "startupProbe on /readyz",
    ),
    "startup-probe-unknown-path": (
        "native-sidecar",
        lambda d: sidecar(d)["startupProbe"]["httpGet"].update(path="/ready"),
        "'/ready' is not a ztr endpoint",
    ),
    "startup-probe-too-short": (
        "native-sidecar",
        lambda d: sidecar(d)["startupProbe"].update(failureThreshold=10),
        "load deadline",
    ),
    "liveness-probe-wrong-port": (
        "native-sidecar",
        lambda d: sidecar(d)["livenessProbe"]["httpGet"].update(port=9103),
        "not ztr's metrics port",
    ),
    "liveness-probe-unknown-port-name": (
        "exec-wrapper",
        lambda d: container(d, "app")["livenessProbe"]["httpGet"].update(port="http"),
        "not ztr's metrics port",
    ),
    "readiness-probe-on-sidecar": (
        "native-sidecar",
        lambda d: sidecar(d).update(readinessProbe=sidecar(d)["startupProbe"]),
        "no readinessProbe",
    ),
    "metrics-addr-loopback": (
        "native-sidecar",
        lambda d: set_env(sidecar(d), "ZTR_METRICS_ADDR", "127.0.0.1:9102"),
        "cannot reach",
    ),
    "metrics-addr-other-port": (
        "native-sidecar",
        lambda d: set_env(sidecar(d), "ZTR_METRICS_ADDR", "0.0.0.0:9200"),
        "not where ztr listens",
    ),
    "unknown-ztr-variable": (
        "native-sidecar",
        lambda d: set_env(sidecar(d), "ZTR_REFRESH_INTERVALL", "1m"),
        "ZTR_REFRESH_INTERVALL is not a ztr variable",
    ),
    "unknown-ztr-variable-on-app": (
        "exec-wrapper",
        lambda d: set_env(container(d, "app"), "ZTR_GRACE", "5s"),
        "ZTR_GRACE is not",
    ),
    "variable-ignored-by-command": (
        "init-container",
        lambda d: set_env(sidecar(d), "ZTR_METRICS_ADDR", "0.0.0.0:9102"),
        "ignored by `ztr init`",
    ),
    "ztr-variable-where-ztr-does-not-run": (
        "native-sidecar",
        lambda d: set_env(container(d, "app"), "ZTR_REGION", "eu-west-1"),
        "ztr does not run in this container",
    ),
    "bad-variable-value": (
        "native-sidecar",
        lambda d: set_env(sidecar(d), "ZTR_REFRESH_INTERVAL", "5 minutes"),
        "ztr rejects",
    ),
    "unknown-flag": (
        "native-sidecar",
        lambda d: sidecar(d)["args"].append("--refresh-intervall=1m"),
        "ztr rejects",
    ),
    "bad-secret-reference": (
        "native-sidecar",
        lambda d: set_arg(sidecar(d), "--secret", "DATABASE-PASSWORD=sm://production/db"),
        "ztr rejects",
    ),
    "exec-wrapper-no-command": ("exec-wrapper", lambda d: container(d, "app").pop("args"), "ztr rejects"),
    "empty-dir-on-disk": ("native-sidecar", lambda d: volume(d)["emptyDir"].pop("medium"), "medium: Memory"),
    "empty-dir-unbounded": ("init-container", lambda d: volume(d)["emptyDir"].pop("sizeLimit"), "sizeLimit"),
    "output-off-volume": (
        "native-sidecar",
        lambda d: set_arg(sidecar(d), "--output", "/tmp/app.env"),
        "not on an emptyDir",
    ),
    "mount-hides-token": (
        "native-sidecar",
        lambda d: sidecar(d)["volumeMounts"][0].update(mountPath="/run/secrets"),
        "IRSA / Pod Identity",
    ),
    "wait-for-other-file": (
        "native-sidecar",
        lambda d: set_env(container(d, "app"), "ZTR_WAIT_FOR_FILE", "/run/secrets/ztr/x.env"),
        "not written by ztr",
    ),
    "wait-timeout-bad": (
        "init-container",
        lambda d: set_env(container(d, "app"), "ZTR_WAIT_TIMEOUT", "ten"),
        "ZTR_WAIT_TIMEOUT",
    ),
    "wait-var-without-entrypoint": (
        "native-sidecar",
        lambda d: container(d, "app").update(command=["python"]),
        "read only by /entrypoint.sh",
    ),
    "sourced-file-as-json": (
        "native-sidecar",
        lambda d: sidecar(d)["args"].extend(["--format", "json"]),
        "sourced by sh",
    ),
    "reader-mount-writable": (
        "init-container",
        lambda d: container(d, "app")["volumeMounts"][0].pop("readOnly"),
        "readOnly",
    ),
    "reader-other-user": (
        "native-sidecar",
        lambda d: container(d, "app").setdefault("securityContext", {}).update(runAsUser=1000),
        "share the user",
    ),
    "writable-root": (
        "native-sidecar",
        lambda d: sidecar(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    "privilege-escalation": (
        "exec-wrapper",
        lambda d: container(d, "app")["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation",
    ),
    "capabilities-kept": (
        "native-sidecar",
        lambda d: sidecar(d)["securityContext"].pop("capabilities"),
        "drop ALL",
    ),
    "root-allowed": (
        "init-container",
        lambda d: pod_spec(d)["securityContext"].pop("runAsNonRoot"),
        "runAsNonRoot",
    ),
    "seccomp-unconfined": (
        "native-sidecar",
        lambda d: pod_spec(d)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "seccompProfile",
    ),
    "memory-limit-too-small": (
        "native-sidecar",
        lambda d: sidecar(d)["resources"]["limits"].update(memory="40Mi"),
        "measured peak",
    ),
    "memory-limit-missing": (
        "init-container",
        lambda d: sidecar(d)["resources"].pop("limits"),
        "limits.memory",
    ),
    "grace-period-too-long": (
        "exec-wrapper",
        lambda d: set_env(container(d, "app"), "ZTR_GRACE_PERIOD", "30s"),
        "grace-period",
    ),
    "scrape-port-wrong": (
        "native-sidecar",
        lambda d: annotations(d).update({"prometheus.io/port": "8080"}),
        "prometheus.io/port",
    ),
    "scrape-path-wrong": (
        "exec-wrapper",
        lambda d: annotations(d).update({"prometheus.io/path": "/healthz"}),
        "prometheus.io/path",
    ),
    "service-named-target-port": (
        "native-sidecar-servicemonitor",
        lambda d: service(d)["spec"]["ports"][0].update(targetPort="metrics"),
        "kubernetes/kubernetes#127958",
    ),
    "service-selects-nothing": (
        "native-sidecar-servicemonitor",
        lambda d: service(d)["spec"].update(selector={"app": "other"}),
        "matches no pod template",
    ),
    "servicemonitor-unknown-port": (
        "native-sidecar-servicemonitor",
        lambda d: service_monitor(d)["spec"]["endpoints"][0].update(port="web"),
        "is not a port name",
    ),
    "irsa-annotation-missing": ("native-sidecar", lambda d: d[0]["metadata"].pop("annotations"), "role-arn"),
    "service-account-unknown": (
        "exec-wrapper",
        lambda d: pod_spec(d).update(serviceAccountName="default"),
        "serviceAccountName",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_semantic_checks_broken_copy_is_rejected(case: str) -> None:
    name, breakage, phrase = BROKEN[case]
    docs = copy.deepcopy(bundle(name))
    assert problems(docs) == []
    breakage(docs)
    found = problems(docs)
    assert any(phrase in problem for problem in found), found


def test_semantic_checks_probe_with_metrics_off_is_rejected() -> None:
    """Built directly: `--metrics-addr off` resolves to the default address in this ztr version."""
    docs = bundle("native-sidecar")
    spec = pod_spec(docs)
    command, argv = ztr_invocation(sidecar(docs)) or ("", [])
    config = cli.resolve_config(command, argv, literal_env(sidecar(docs)))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert check_ztr("sidecar", sidecar(docs), True, config, spec, volumes) == []
    off = config._replace(metrics_addr=None)
    found = check_ztr("sidecar", sidecar(docs), True, off, spec, volumes)
    assert any("--metrics-addr is off" in problem for problem in found), found


def test_semantic_checks_broken_copy_on_disk_is_rejected(tmp_path: Path) -> None:
    """The brief's example end to end: a copy of k8s/ with restartPolicy: Sometimes fails."""
    copied = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, copied)
    deployment = copied / "deployment.yaml"
    text, count = re.subn(
        r"^(\s+)restartPolicy: Always$",
        r"\1restartPolicy: Sometimes",
        deployment.read_text(),
        flags=re.MULTILINE,
    )
    assert count == 1
    deployment.write_text(text)
    assert problems(bundle_docs(K8S_DIR)) == []
    assert any("Sometimes" in problem for problem in problems(bundle_docs(copied)))


# -- push rotation (issue 12) --------------------------------------------------------------------

EVENTS_VARIABLES = {"ZTR_EVENTS_TOPIC": None, "ZTR_REFRESH_INTERVAL": "1h"}


def test_events_variant_is_native_sidecar_plus_events_variables() -> None:
    """Nothing but the two variables differs, so the variant cannot drift from the main one."""
    events, native = bundle_docs(EVENTS_VARIANT), bundle("native-sidecar")
    env = sidecar(events)["env"]
    added = [item for item in env if item["name"] in EVENTS_VARIABLES]
    assert [item["name"] for item in added] == list(EVENTS_VARIABLES)
    assert literal_env(sidecar(events))["ZTR_REFRESH_INTERVAL"] == "1h"
    sidecar(events)["env"] = [item for item in env if item["name"] not in EVENTS_VARIABLES]
    assert events == native


def test_events_variant_topic_is_a_topic_arn() -> None:
    from sidecar.events import validate_topic_arn

    topic = literal_env(sidecar(bundle_docs(EVENTS_VARIANT)))["ZTR_EVENTS_TOPIC"]
    assert validate_topic_arn(topic) == topic


def test_events_variant_semantic_checks_pass() -> None:
    assert problems(bundle_docs(EVENTS_VARIANT)) == []
