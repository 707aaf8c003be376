"""sidecar.clients: the selection of botocore's data is generated from the installed botocore, only
its models load, a stale or missing one falls back to botocore's own loader, and clients behave as
botocore's plain ones do: endpoints in every partition, FIPS and dual-stack, endpoint variables,
the credential chain (environment, IRSA, EKS Pod Identity, assume-role profiles), retries, errors.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore
import botocore.config
import botocore.loaders
import botocore.session
import pytest
from botocore.exceptions import ClientError

from sidecar import clients
from sidecar.errors import SecretNotFoundError
from sidecar.refs import FetchKey
from sidecar.source import SecretsManagerSource

REGION = "us-east-1"
CALLS: dict[str, Callable[[Any], Any]] = {
    "secretsmanager": lambda client: client.get_secret_value(SecretId="app/db"),
    "sts": lambda client: client.get_caller_identity(),
    "sqs": lambda client: client.list_queues(),
    "sns": lambda client: client.list_topics(),
}
REGIONS = ("us-east-1", "eu-central-1", "ap-southeast-7", "cn-north-1", "cn-northwest-1",
           "us-gov-west-1", "us-gov-east-1", "us-iso-east-1", "us-isob-east-1", "aws-global")
VARIANTS = {
    "plain": None,
    "fips": botocore.config.Config(use_fips_endpoint=True),
    "dualstack": botocore.config.Config(use_dualstack_endpoint=True),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding one selection, generated once for the module."""
    path = tmp_path_factory.mktemp("selection-root")
    clients.generate(str(path))
    return path


@pytest.fixture(scope="module")
def plain_session() -> botocore.session.Session:
    """botocore's own session, shared: its loader parses botocore's data once for the module."""
    return botocore.session.get_session()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def selection(root: Path) -> clients.SelectionLoader:
    loader = clients.open_selection([str(root)], create=False)
    assert loader is not None
    return loader


class _SentError(Exception):
    """Raised from before-send: the request was built and signed; nothing goes out."""


def sent(client: Any, call: Callable[[Any], Any]) -> tuple[str, str]:
    """The URL and the signature's credential scope (region/service) of ``call``'s request."""
    seen: dict[str, Any] = {}

    def before_send(request: Any, **_: Any) -> None:
        seen["url"] = request.url
        seen["auth"] = request.headers.get("Authorization", b"")
        raise _SentError

    client.meta.events.register("before-send", before_send)
    with pytest.raises(_SentError):
        call(client)
    auth = seen["auth"].decode() if isinstance(seen["auth"], bytes) else seen["auth"]
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")[2:4]
    return seen["url"], "/".join(scope)


# -- the selection ------------------------------------------------------------------------


def test_generate_selection_matches_installed_botocore(root: Path) -> None:
    directory = clients.find_selection([str(root)])
    assert directory is not None
    assert clients.verify(directory) == []


def test_generate_selection_holds_only_the_selected_services(root: Path) -> None:
    directory = Path(selection(root).directory)
    available = set(botocore.loaders.Loader().list_available_services("service-2"))
    wanted = set(clients.SERVICES) | (set(clients.CHAIN_SERVICES) & available)
    assert {p.name for p in directory.iterdir() if p.is_dir()} == wanted
    assert {p.name for p in directory.iterdir() if p.is_file()} == {
        "endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json",
        clients.MANIFEST}
    assert not list(directory.rglob("examples-1.*"))
    endpoints = json.loads((directory / "endpoints.json").read_text())
    full = botocore.loaders.Loader().load_data("endpoints")
    assert [p["partition"] for p in endpoints["partitions"]] == [p["partition"] for p in full["partitions"]]
    for cut, whole in zip(endpoints["partitions"], full["partitions"], strict=True):
        assert {k: v for k, v in cut.items() if k != "services"} == {
            k: v for k, v in whole.items() if k != "services"}
        assert set(cut["services"]) <= {"secretsmanager", "sts", "sqs", "sns", "portal.sso", "oidc",
                                        "signin"}
    assert "sts" in endpoints["partitions"][0]["services"]


def test_verify_tampered_file_reports_it(tmp_path: Path) -> None:
    directory = Path(clients.generate(str(tmp_path)))
    (directory / "_retry.json").write_text("{}")
    model = next(directory.glob("sts/*/service-2.json*"))
    model.write_bytes(model.read_bytes()[:-1])
    problems = clients.verify(str(directory))
    assert any(p.startswith("_retry.json") for p in problems)
    assert any(p.startswith("sts/") for p in problems)


def test_selection_loader_loads_only_selected_models(root: Path, credentials: None) -> None:
    loaded: list[str] = []

    class Recording(botocore.loaders.JSONFileLoader):
        def load_file(self, file_path: str) -> Any:
            data = super().load_file(file_path)
            if data is not None:
                loaded.append(file_path)
            return data

    directory = selection(root).directory
    loader = clients.SelectionLoader(directory, clients.SERVICES, file_loader=Recording())
    session = clients.new_session(loader=loader)
    for service in clients.SERVICES:
        clients.create_client(service, region=REGION, session=session)
    assert loader.search_paths == [directory]
    assert all(path.startswith(directory + os.sep) for path in loaded), loaded
    names = {os.path.relpath(path, directory).split(os.sep)[0] for path in loaded}
    assert set(clients.SERVICES) <= names <= {*clients.SERVICES, *clients.SHARED}


# -- staleness and fallbacks ----------------------------------------------------------------


def test_open_selection_stale_botocore_version_finds_none(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert clients.open_selection([str(root)], create=False) is not None
    monkeypatch.setattr(botocore, "__version__", "0.0.1")  # as after an upgrade
    assert clients.find_selection([str(root)]) is None
    assert clients.open_selection([str(root)], create=False) is None


def test_open_selection_damaged_manifest_is_regenerated(tmp_path: Path) -> None:
    directory = Path(clients.generate(str(tmp_path)))
    manifest = json.loads((directory / clients.MANIFEST).read_text())
    (directory / clients.MANIFEST).write_text(json.dumps({**manifest, "format": -1}))
    assert clients.open_selection([str(tmp_path)], create=False) is None
    loader = clients.open_selection([str(tmp_path)])
    assert loader is not None
    assert loader.directory == str(directory)
    assert clients.verify(str(directory)) == []


def test_open_selection_unwritable_roots_gives_none(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert clients.open_selection([str(blocker / "ztr")]) is None


def test_open_selection_second_root_used_when_first_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loader = clients.open_selection([str(blocker / "ztr"), str(tmp_path / "cache")])
    assert loader is not None
    assert loader.directory.startswith(str(tmp_path / "cache"))


def test_new_session_aws_data_path_keeps_botocore_loader(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    loader = clients.new_session().get_component("data_loader")
    assert not isinstance(loader, clients.SelectionLoader)
    assert str(tmp_path) in loader.search_paths


def test_new_session_default_uses_process_selection(credentials: None) -> None:
    # The first use generates the selection under the install prefix (or the user's cache).
    session = clients.new_session()
    loader = session.get_component("data_loader")
    assert isinstance(loader, clients.SelectionLoader)
    assert clients.verify(loader.directory) == []


def test_roots_prefix_then_xdg_cache() -> None:
    assert clients.roots({"XDG_CACHE_HOME": "/c", "HOME": "/h"})[1] == "/c/ztr"
    assert clients.roots({"HOME": "/h"})[1] == "/h/.cache/ztr"
    assert clients.roots({"HOME": "relative"}) == clients.roots({})
    assert len(clients.roots({})) == 1


def test_create_client_unselected_service_same_as_botocore(
        root: Path, plain_session: botocore.session.Session, credentials: None) -> None:
    session = clients.new_session(loader=selection(root))
    for region in ("us-east-1", "cn-north-1", "us-gov-west-1"):
        ours = clients.create_client("kms", region=region, session=session)
        plain = plain_session.create_client("kms", region_name=region)
        assert sent(ours, lambda c: c.list_keys()) == sent(plain, lambda c: c.list_keys())


# -- endpoints and signing in every partition --------------------------------------------


@pytest.mark.parametrize("service", clients.SERVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_create_client_endpoint_and_scope_same_as_botocore(
        root: Path, plain_session: botocore.session.Session, credentials: None, service: str,
        variant: str) -> None:
    ours = clients.new_session(loader=selection(root))
    differ = {}
    for region in REGIONS:
        config = VARIANTS[variant]
        outcomes = []
        for session in (ours, plain_session):
            try:
                client = clients.create_client(service, region=region, config=config,
                                               session=session)
                outcomes.append(sent(client, CALLS[service]))
            except Exception as exc:  # e.g. no FIPS endpoint in this partition: the same error
                outcomes.append((type(exc).__name__, str(exc)))
        if outcomes[0] != outcomes[1]:
            differ[region] = outcomes
    assert differ == {}


@pytest.mark.parametrize(("region", "partition", "host"), [
    ("cn-north-1", "aws-cn", "secretsmanager.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "aws-us-gov", "secretsmanager.us-gov-west-1.amazonaws.com"),
    ("eu-west-1", "aws", "secretsmanager.eu-west-1.amazonaws.com"),
])
def test_create_client_partition_endpoint(root: Path, credentials: None, region: str,
                                          partition: str, host: str) -> None:
    client = clients.create_client("secretsmanager", region=region,
                                   session=clients.new_session(loader=selection(root)))
    assert client.meta.partition == partition
    assert sent(client, CALLS["secretsmanager"]) == (f"https://{host}/", f"{region}/secretsmanager")


# -- endpoint variables, retries, errors against moto ----------------------------------------


@pytest.fixture
def moto_env(endpoint: str, monkeypatch: pytest.MonkeyPatch, credentials: None) -> str:
    monkeypatch.setenv("AWS_REGION", REGION)
    return endpoint


def test_create_client_service_endpoint_variable(moto_env: str, root: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_env)
    client = clients.create_client("secretsmanager", region=REGION,
                                   session=clients.new_session(loader=selection(root)))
    assert client.meta.endpoint_url == moto_env
    client.create_secret(Name="app/db", SecretString="s3cret")
    assert client.get_secret_value(SecretId="app/db")["SecretString"] == "s3cret"


def test_create_client_global_endpoint_variable(moto_env: str, root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_env)
    session = clients.new_session(loader=selection(root))
    for service in clients.SERVICES:
        assert clients.create_client(service, region=REGION, session=session).meta.endpoint_url == moto_env
    identity = clients.create_client("sts", region=REGION, session=session).get_caller_identity()
    assert identity["Account"]


def test_create_client_explicit_endpoint_beats_variable(moto_env: str, root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9")
    client = clients.create_client("secretsmanager", region=REGION, endpoint_url=moto_env,
                                   session=clients.new_session(loader=selection(root)))
    assert client.meta.endpoint_url == moto_env


def test_create_client_keeps_config_and_translates_errors(moto_env: str, root: Path) -> None:
    config = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 2},
                                    read_timeout=3, user_agent_extra="ztr")
    client = clients.create_client("secretsmanager", region=REGION, endpoint_url=moto_env,
                                   config=config, session=clients.new_session(loader=selection(root)))
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert client.meta.config.read_timeout == 3
    with pytest.raises(ClientError) as caught:
        client.get_secret_value(SecretId="missing")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert isinstance(caught.value, client.exceptions.ResourceNotFoundException)
    source = SecretsManagerSource(client, region=REGION)
    with pytest.raises(SecretNotFoundError):
        source.get_one(FetchKey("missing"))


# -- the credential chain ---------------------------------------------------------------------


def _identity_via(session: botocore.session.Session) -> tuple[str, str]:
    sts = clients.create_client("sts", region=REGION, session=session)
    arn = sts.get_caller_identity()["Arn"]
    credentials = session.get_credentials()
    assert credentials is not None
    return credentials.method, arn


def test_credentials_environment(moto_env: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env)
    method, _ = _identity_via(clients.new_session(loader=selection(root)))
    assert method == "env"


def test_credentials_web_identity_irsa(moto_env: str, root: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ztr-irsa")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env)
    session = clients.new_session(loader=selection(root))
    method, arn = _identity_via(session)
    assert method == "assume-role-with-web-identity"
    assert "ztr-irsa" in arn


def test_credentials_assume_role_profile(moto_env: str, root: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config = tmp_path / "config"
    config.write_text(
        "[profile base]\naws_access_key_id = testing\naws_secret_access_key = testing\n\n"
        "[profile app]\nrole_arn = arn:aws:iam::123456789012:role/ztr-app\nsource_profile = base\n"
        f"region = {REGION}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "app")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env)
    method, arn = _identity_via(clients.new_session(loader=selection(root)))
    assert method == "assume-role"
    assert "ztr-app" in arn


class _ContainerCredentials(BaseHTTPRequestHandler):
    token = "pod-identity-token"

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.token:
            self.send_error(401)
            return
        body = json.dumps({"AccessKeyId": "ASIAPODIDENTITY", "SecretAccessKey": "testing",
                           "Token": "session", "Expiration": "2099-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def container_credentials() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ContainerCredentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/credentials"
    server.shutdown()
    server.server_close()


def test_credentials_container_pod_identity(moto_env: str, root: Path, tmp_path: Path,
                                            container_credentials: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # EKS Pod Identity and ECS task roles both use botocore's container provider; Pod Identity
    # gives a full URI and a token file.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    token = tmp_path / "eks-pod-identity-token"
    token.write_text(_ContainerCredentials.token)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", container_credentials)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env)
    session = clients.new_session(loader=selection(root))
    method, _ = _identity_via(session)
    assert method == "container-role"
    credentials = session.get_credentials()
    assert credentials is not None
    assert credentials.access_key == "ASIAPODIDENTITY"


def test_chain_services_create_from_selection(
        root: Path, plain_session: botocore.session.Session, credentials: None) -> None:
    # IAM Identity Center profiles make sso / sso-oidc clients from the same session.
    loader = selection(root)
    session = clients.new_session(loader=loader)
    for service in sorted(loader.services - set(clients.SERVICES)):
        plain = plain_session.create_client(service, region_name="eu-west-1")
        ours = session.create_client(service, region_name="eu-west-1")
        assert ours.meta.endpoint_url == plain.meta.endpoint_url


def test_prune_botocore_data_keeps_only_the_selection(root: Path, tmp_path: Path) -> None:
    import shutil

    builtin = Path(botocore.loaders.Loader.BUILTIN_DATA_PATH)
    directory = selection(root).directory
    manifest = json.loads((Path(directory) / clients.MANIFEST).read_text())
    data = tmp_path / "data"  # a small botocore/data: the selected services and two others
    for name in [*manifest["services"], "kms", "ssm"]:
        shutil.copytree(builtin / name, data / name)
    for path in builtin.glob("*.json"):
        shutil.copy(path, data / path.name)
    old_version = data / "sts" / "2000-01-01"
    shutil.copytree(next((data / "sts").iterdir()), old_version)
    removed = clients.prune_botocore_data(directory, str(data))
    assert set(removed) >= {"kms", "ssm", os.path.join("sts", "2000-01-01")}
    assert {p.name for p in data.iterdir() if p.is_dir()} == set(manifest["services"])
    assert not list(data.rglob("examples-1.*"))
    # botocore's own loader still finds everything a client needs there, unchanged.
    own = botocore.loaders.Loader(extra_search_paths=[str(data)], include_default_search_paths=False)
    for service, entry in manifest["services"].items():
        for relative in entry["files"]:
            assert (data / relative).read_bytes() == (builtin / relative).read_bytes()
        assert own.load_service_model(service, "service-2")["metadata"]["endpointPrefix"]
    assert (data / "endpoints.json").read_bytes() == (builtin / "endpoints.json").read_bytes()


def test_main_verify_and_usage(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = selection(root).directory
    assert clients.main(["verify", directory]) == 0
    assert "matches botocore" in capsys.readouterr().out
    assert clients.main(["frobnicate"]) == 64
    assert "usage:" in capsys.readouterr().err
