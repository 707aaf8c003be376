"""Shared fixtures: a clean environment, a moto server on 127.0.0.1:0 over HTTP, a tmpfs dir."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

pytest_plugins = ("tests.helpers.faultproxy", "tests.helpers.canary", "tests.helpers.records")

SCRUBBED_PREFIXES = ("ZTR_", "AWS_")
SCRUBBED = ("USE_AWS_SECRETS", "NODE_ENV")
REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": REGION,
}


# Tests that start real processes (ztr, apps, shells, cfn-lint, kubectl): `make test-fast` leaves
# them out for the inner loop; `make test` runs everything.
_PROCESS_DIRS = ("integration", "reliability", "image", "manifests")  # manifests: cfn-lint, kubectl
_PROCESS_FILES = ("test_supervisor.py", "test_entrypoint.py", "test_lint_image.py", "test_readers.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if path.parent.name in _PROCESS_DIRS or path.name in _PROCESS_FILES:
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's AWS profile or a stray ZTR_* setting."""
    for name in list(os.environ):
        if name.startswith(SCRUBBED_PREFIXES) or name in SCRUBBED:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/ztr-tests")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/ztr-tests")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def endpoint(moto_endpoint: str) -> str:
    """The moto endpoint, with its state reset for this test."""
    request = urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return moto_endpoint


@pytest.fixture
def sm(endpoint: str) -> Any:
    """A boto3 Secrets Manager client on the moto server, for arranging tests."""
    return boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def ztr_env(endpoint: str) -> dict[str, str]:
    """The environment a ztr subprocess gets: boto3's own endpoint variable points at moto."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(SCRUBBED_PREFIXES) and key not in SCRUBBED}
    env.update(FAKE_CREDENTIALS)
    env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = endpoint
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/ztr-tests"
    env["AWS_CONFIG_FILE"] = "/nonexistent/ztr-tests"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["ZTR_LOG_FORMAT"] = "json"
    env["ZTR_METRICS_ADDR"] = "127.0.0.1:0"
    return env


@pytest.fixture
def shm() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm), where ztr writes without --allow-disk."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="ztr-test-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)
