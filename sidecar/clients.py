"""botocore clients for the services ztr calls, loaded from a selection of botocore's own data.

A plain botocore session lists every service directory in botocore/data (400+) and parses the
1.2 MB legacy ``endpoints.json`` before its first client exists. ztr calls four services, so it
gives the session a ``botocore.loaders.Loader`` whose only search path is a *selection*: the
latest API version of each service ztr (or botocore's credential chain) may call, copied from the
installed botocore, and ``endpoints.json`` cut to those services in every partition. Everything
else is botocore as usual: credential chain, ``AWS_ENDPOINT_URL_*``, endpoint rulesets, retries.

The selection is generated from the installed botocore, never kept in git:

* at image build (``python -m sidecar.clients generate``) into ``<sys.prefix>/share/ztr``, which
  the read-only image then only reads;
* otherwise on first use, into the first writable of ``<sys.prefix>/share/ztr`` and
  ``$XDG_CACHE_HOME/ztr`` (``~/.cache/ztr``).

Its directory is named after the botocore version and the selected services, and its manifest
repeats both: after a botocore upgrade the old selection no longer matches and a new one is
generated. Whenever no valid selection can be found or made, or ``AWS_DATA_PATH``,
``~/.aws/models`` or a pinned ``api_versions`` asks for data outside it, the session keeps
botocore's own loader: slower, never different.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import botocore
import botocore.loaders

from . import logs

if TYPE_CHECKING:
    import botocore.config
    import botocore.session

# What ztr itself calls: Secrets Manager, STS (check, iam-policy), SQS and SNS (rotation events).
SERVICES = ("secretsmanager", "sts", "sqs", "sns")
# What botocore's credential chain may create clients for (IAM Identity Center profiles, the
# ``aws login`` provider; STS for web identity and assume-role is above). Taken when the
# installed botocore has them.
CHAIN_SERVICES = ("sso", "sso-oidc", "signin")
# Data files that every session or client loads, whatever the service.
SHARED = ("endpoints", "partitions", "sdk-default-configuration", "_retry")
# Documentation only: botocore reads examples when it builds docs, never for a request.
SKIPPED_TYPES = ("examples-1",)
FORMAT = 1  # bump when the layout or the selection rules change
MANIFEST = "ztr-selection.json"
SUFFIXES = (".json", ".json.gz")


class SelectionLoader(botocore.loaders.Loader):
    """botocore's Loader searching one generated selection directory.

    A service outside the selection (one a future credential provider might call) is loaded
    from botocore's own data instead of failing; its endpoint then comes from its endpoint
    rules alone, as endpoints.json holds only the selected services.
    """

    def __init__(self, directory: str, services: Iterable[str],
                 file_loader: botocore.loaders.JSONFileLoader | None = None) -> None:
        super().__init__(extra_search_paths=[directory], file_loader=file_loader,
                         include_default_search_paths=False)
        self.directory = os.path.abspath(directory)
        self.services = frozenset(services)

    def is_builtin_path(self, path: str) -> bool:
        # botocore treats data found outside its own data directory as a customisation and then
        # feeds the legacy endpoints.json result into the endpoint rules as a custom endpoint
        # (https://github.com/boto/botocore/pull/2801), which changes FIPS and dual-stack URLs.
        # The selection is botocore's shipped data, not a customisation: it must resolve
        # exactly as botocore/data does.
        target = os.path.abspath(os.path.expanduser(os.path.expandvars(path)))
        return (os.path.commonpath([target, self.directory]) == self.directory
                or super().is_builtin_path(path))

    def load_service_model(self, service_name: str, type_name: str,
                           api_version: str | None = None) -> Any:
        if service_name not in self.services:
            return _builtin_loader().load_service_model(service_name, type_name, api_version)
        return super().load_service_model(service_name, type_name, api_version)


@functools.cache
def _builtin_loader() -> botocore.loaders.Loader:
    return botocore.loaders.Loader()


# -- clients ------------------------------------------------------------------------------


def new_session(*, loader: botocore.loaders.Loader | None = None) -> botocore.session.Session:
    """A botocore session as boto3 would make it (default credential chain, config files,
    ``AWS_*`` variables), its data loaded by ``loader``: by default the process's selection
    (``selection_loader()``) unless ``AWS_DATA_PATH``, ``~/.aws/models`` or pinned
    ``api_versions`` ask for other data, or there is no selection; then botocore's own.
    Clients created from one session share its credentials."""
    import botocore.session

    session = botocore.session.get_session()
    if loader is None and _selection_applies(session):
        loader = selection_loader()
    if loader is not None:
        session.register_component("data_loader", loader)
    return session


def create_client(service_name: str, *, region: str | None, endpoint_url: str | None = None,
                  config: botocore.config.Config | None = None,
                  session: botocore.session.Session | None = None) -> Any:
    """A botocore client for ``service_name``: ``session.create_client`` on ``session``
    (default: ``new_session()``; botocore's plain session for a service ztr does not select).

    ``endpoint_url=None`` leaves the endpoint to botocore (``AWS_ENDPOINT_URL_<SERVICE>``,
    ``AWS_ENDPOINT_URL``, the config file, then the endpoint rules for ``region``). Raises what
    ``Session.create_client`` raises (``NoRegionError``, ``UnknownServiceError``, ...).
    """
    if session is None:
        if service_name in SERVICES:
            session = new_session()
        else:
            import botocore.session

            session = botocore.session.get_session()
    return session.create_client(service_name, region_name=region, endpoint_url=endpoint_url,
                                 config=config)


def _selection_applies(session: botocore.session.Session) -> bool:
    if session.get_config_variable("data_path"):  # AWS_DATA_PATH adds models of its own
        return False
    if session.get_config_variable("api_versions"):  # perhaps an API version not selected
        return False
    return not os.path.isdir(botocore.loaders.Loader.CUSTOMER_DATA_PATH)  # ~/.aws/models


def open_selection(search: Iterable[str] | None = None, *,
                   create: bool = True) -> SelectionLoader | None:
    """A loader over the first valid selection under ``search`` (default ``roots()``); with
    ``create``, one is generated in the first writable root when none is valid. None when
    there is none (botocore's own loader stays)."""
    search = roots() if search is None else list(search)
    directory = find_selection(search) or (_generate_anywhere(search) if create else None)
    manifest = _manifest(directory) if directory else None
    if directory is None or manifest is None:
        return None
    return SelectionLoader(directory, manifest["services"])


@functools.cache
def selection_loader() -> SelectionLoader | None:
    """The process's selection loader, made once (it caches what it parses)."""
    loader = open_selection()
    if loader is None:
        logs.debug("no botocore data selection; botocore loads all of its data")
    return loader


# -- where the selection lives ----------------------------------------------------------


def selection_name(services: Sequence[str] = SERVICES) -> str:
    """The directory name: botocore's version and a digest of what ztr selects."""
    spec = json.dumps({"format": FORMAT, "services": list(services),
                       "chain": list(CHAIN_SERVICES)}, sort_keys=True)
    return f"botocore-{botocore.__version__}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def roots(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Where selections are looked for, in order: the install prefix (image builds write here),
    then the user's cache directory."""
    found = [os.path.join(sys.prefix, "share", "ztr")]
    cache = environ.get("XDG_CACHE_HOME")
    if not cache:
        home = environ.get("HOME")
        cache = os.path.join(home, ".cache") if home else ""
    if cache and os.path.isabs(cache):
        found.append(os.path.join(cache, "ztr"))
    return found


def find_selection(search: Iterable[str] | None = None) -> str | None:
    """The first selection directory under ``search`` (default ``roots()``) whose manifest
    matches the installed botocore and ztr's selection; None when there is none."""
    name = selection_name()
    for root in roots() if search is None else search:
        directory = os.path.join(root, name)
        if _manifest(directory):
            return directory
    return None


def _manifest(directory: str, services: Sequence[str] = SERVICES) -> dict[str, Any] | None:
    """The manifest at ``directory`` if it is for the installed botocore and ``services``."""
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and manifest.get("botocore") == botocore.__version__
            and manifest.get("requested") == list(services)
            and all(name in manifest.get("services", {}) for name in services)):
        return manifest
    return None


def _generate_anywhere(search: Iterable[str]) -> str | None:
    for root in search:
        try:
            return generate(root)
        except OSError as exc:  # read-only or missing: try the next root
            logs.debug("cannot write the botocore data selection here", root=root,
                       error=type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - an unexpected botocore layout: keep botocore's loader
            logs.debug("cannot select botocore data; using all of it", error=type(exc).__name__)
            return None
    return None


# -- generating and checking a selection --------------------------------------------------


def _source_loader() -> botocore.loaders.Loader:
    """A loader over botocore's shipped data only (not AWS_DATA_PATH, not ~/.aws/models)."""
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    return botocore.loaders.Loader(extra_search_paths=[builtin], include_default_search_paths=False)


def _data_file(directory: str, name: str) -> str | None:
    for suffix in SUFFIXES:
        path = os.path.join(directory, name + suffix)
        if os.path.isfile(path):
            return path
    return None


def plan(services: Sequence[str] = SERVICES) -> dict[str, Any]:
    """What a selection holds, read from the installed botocore: for each service its latest
    API version, endpoint prefix and files; the shared files; the source of each, relative to
    botocore's data directory."""
    source = _source_loader()
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    available = set(source.list_available_services("service-2"))
    missing = [name for name in services if name not in available]
    if missing:
        raise LookupError(f"botocore {botocore.__version__} has no model for {', '.join(missing)}")
    chosen: dict[str, dict[str, Any]] = {}
    for name in [*services, *(n for n in CHAIN_SERVICES if n in available and n not in services)]:
        version = source.determine_latest_version(name, "service-2")
        model = source.load_service_model(name, "service-2", version)
        folder = os.path.join(name, version)
        files = sorted(
            os.path.join(folder, entry) for entry in os.listdir(os.path.join(builtin, folder))
            if os.path.isfile(os.path.join(builtin, folder, entry))
            and not entry.startswith(SKIPPED_TYPES))
        chosen[name] = {"api_version": version,
                        "endpoint_prefix": model["metadata"]["endpointPrefix"], "files": files}
    shared = {}
    for name in SHARED:
        path = _data_file(builtin, name)
        if path is None:
            raise LookupError(f"botocore {botocore.__version__} has no {name} data")
        shared[name] = os.path.relpath(path, builtin)
    return {"services": chosen, "shared": shared}


def select_endpoints(endpoints: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """botocore's endpoints data with every partition kept whole but its services cut to
    ``prefixes`` (endpoint prefixes, as endpoints.json keys them)."""
    keep = set(prefixes)
    partitions = [
        {**partition, "services": {key: value for key, value in partition["services"].items()
                                   if key in keep}}
        for partition in endpoints["partitions"]
    ]
    return {**endpoints, "partitions": partitions}


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def generate(root: str, services: Sequence[str] = SERVICES) -> str:
    """Write the selection for the installed botocore under ``root`` (atomically: a temporary
    directory renamed into place) and return its path; an existing valid one is kept.

    Raises OSError when ``root`` cannot be written, LookupError when botocore lacks a service.
    """
    import shutil
    import tempfile

    name = selection_name(services)
    final = os.path.join(root, name)
    if _manifest(final, services):
        return final
    layout = plan(services)
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
    try:
        hashes = {}
        for service in layout["services"].values():
            for relative in service["files"]:
                os.makedirs(os.path.join(work, os.path.dirname(relative)), exist_ok=True)
                shutil.copyfile(os.path.join(builtin, relative), os.path.join(work, relative))
                hashes[relative] = _sha256(os.path.join(builtin, relative))
        for data, relative in layout["shared"].items():
            hashes[relative] = _sha256(os.path.join(builtin, relative))
            if data != "endpoints":
                shutil.copyfile(os.path.join(builtin, relative), os.path.join(work, relative))
        endpoints = _source_loader().load_data("endpoints")
        prefixes = [service["endpoint_prefix"] for service in layout["services"].values()]
        with open(os.path.join(work, "endpoints.json"), "w", encoding="utf-8") as handle:
            json.dump(select_endpoints(endpoints, prefixes), handle, separators=(",", ":"))
        manifest = {"format": FORMAT, "botocore": botocore.__version__,
                    "requested": list(services), "services": layout["services"],
                    "shared": layout["shared"], "sources_sha256": hashes}
        with open(os.path.join(work, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1, sort_keys=True)
        # Readable by any user: an image builds this as root and runs as 65532.
        for folder, _, entries in os.walk(work):
            os.chmod(folder, 0o755)  # noqa: S103 - botocore's public data, read by any user
            for entry in entries:
                os.chmod(os.path.join(folder, entry), 0o644)
        if os.path.lexists(final):  # a damaged or partial selection: set it aside first
            aside = tempfile.mkdtemp(prefix=f".{name}.old.", dir=root)
            with contextlib.suppress(FileNotFoundError):  # a concurrent run moved it already
                os.replace(final, os.path.join(aside, name))
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(work, final)
        except OSError:
            if not _manifest(final, services):  # not a concurrent run that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logs.debug("generated the botocore data selection", path=final)
    return final


def verify(directory: str) -> list[str]:
    """How the selection at ``directory`` differs from what the installed botocore gives now
    (an empty list when it matches): every copied file byte for byte, endpoints.json as the
    cut of botocore's, the manifest's version and services."""
    problems: list[str] = []
    manifest = _manifest(directory)
    if manifest is None:
        return [f"{directory}: no manifest for botocore {botocore.__version__} and {list(SERVICES)}"]
    layout = plan(manifest["requested"])
    if layout["services"] != manifest["services"] or layout["shared"] != manifest["shared"]:
        problems.append("the manifest's services or shared files differ from botocore's")
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    expected = {relative for service in layout["services"].values() for relative in service["files"]}
    expected |= {relative for name, relative in layout["shared"].items() if name != "endpoints"}
    for relative in sorted(expected):
        copy = os.path.join(directory, relative)
        if not os.path.isfile(copy) or _sha256(copy) != _sha256(os.path.join(builtin, relative)):
            problems.append(f"{relative}: not botocore's file")
    present = set()
    for folder, _, entries in os.walk(directory):
        present |= {os.path.relpath(os.path.join(folder, entry), directory) for entry in entries}
    extra = present - expected - {MANIFEST, "endpoints.json"}
    problems += [f"{relative}: not in botocore's selection" for relative in sorted(extra)]
    prefixes = [service["endpoint_prefix"] for service in layout["services"].values()]
    with open(os.path.join(directory, "endpoints.json"), encoding="utf-8") as handle:
        if json.load(handle) != select_endpoints(_source_loader().load_data("endpoints"), prefixes):
            problems.append("endpoints.json: not botocore's endpoints cut to the selection")
    return problems


def prune_botocore_data(directory: str, data_dir: str | None = None) -> list[str]:
    """Delete from botocore's data directory (``data_dir``, default the installed botocore's)
    every service and API version that the selection at ``directory`` does not hold, and the
    documentation examples: for image builds, where botocore then still loads the selected
    services from its own data, unchanged. Returns what was removed, relative to ``data_dir``."""
    import shutil

    manifest = _manifest(directory)
    if manifest is None:
        raise LookupError(f"{directory}: no selection for botocore {botocore.__version__}")
    data_dir = data_dir or botocore.loaders.Loader.BUILTIN_DATA_PATH
    keep = {name: service["api_version"] for name, service in manifest["services"].items()}
    removed = []
    for entry in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, entry)
        if not os.path.isdir(path):
            continue  # the shared files stay, endpoints.json whole
        if entry not in keep:
            shutil.rmtree(path)
            removed.append(entry)
            continue
        for version in sorted(os.listdir(path)):
            if version != keep[entry]:
                shutil.rmtree(os.path.join(path, version))
                removed.append(os.path.join(entry, version))
        folder = os.path.join(path, keep[entry])
        for name in sorted(os.listdir(folder)):
            if name.startswith(SKIPPED_TYPES):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(entry, keep[entry], name))
    return removed


USAGE = """usage: python -m sidecar.clients COMMAND [PATH]
  generate [ROOT]             write the selection for the installed botocore under ROOT
                              (default: <sys.prefix>/share/ztr) and print its directory
  verify [DIR]                check a selection (default: the one ztr would use) against botocore
  prune-botocore-data [DIR]   image builds only: delete botocore's data outside the selection"""


def main(argv: Sequence[str] | None = None) -> int:
    """The command line above; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "generate" and len(rest) <= 1:
        print(generate(rest[0] if rest else roots()[0]))
        return 0
    if command in ("verify", "prune-botocore-data") and len(rest) <= 1:
        directory = rest[0] if rest else find_selection()
        if directory is None:
            print(f"no selection for botocore {botocore.__version__} under {roots()}",
                  file=sys.stderr)
            return 1
        if command == "prune-botocore-data":
            removed = prune_botocore_data(directory)
            print(f"removed {len(removed)} entries from botocore's data; kept the selection's")
            return 0
        problems = verify(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{directory}: matches botocore {botocore.__version__}")
        return 1 if problems else 0
    print(USAGE, file=sys.stderr)
    return 64


if __name__ == "__main__":
    raise SystemExit(main())
