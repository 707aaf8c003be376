"""The endpoints' HTTP behaviour and limits, in process on 127.0.0.1, and --metrics-addr parsing."""

from __future__ import annotations

import pytest

from sidecar.config import parse_addr
from sidecar.errors import ConfigError

# -- --metrics-addr ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [
    ("127.0.0.1:9102", ("127.0.0.1", 9102)),
    ("0.0.0.0:9102", ("0.0.0.0", 9102)),
    (":9102", ("0.0.0.0", 9102)),
    ("localhost:0", ("localhost", 0)),
    ("[::]:9102", ("::", 9102)),
    ("[::1]:9102", ("::1", 9102)),
    ("[fe80::1%eth0]:9102", ("fe80::1%eth0", 9102)),
    (" [2001:db8::7]:65535 ", ("2001:db8::7", 65535)),
    ("off", None),
    ("OFF", None),
])
def test_parse_addr_accepts_host_port_ipv6_and_off(raw: str, parsed: tuple[str, int] | None) -> None:
    assert parse_addr(raw, "--metrics-addr") == parsed


@pytest.mark.parametrize(("raw", "hint"), [
    ("::1:9102", "in brackets"),
    ("[::1]", "HOST:PORT"),
    ("[::1]9102", "HOST:PORT"),
    ("[]:9102", "not an IPv6 address"),
    ("[127.0.0.1]:9102", "not an IPv6 address"),
    ("[::1:9102", "not an IPv6 address"),
    ("::1]:9102", "not an IPv6 address"),
    ("[nope]:9102", "not an IPv6 address"),
    ("127.0.0.1:99999", "HOST:PORT"),
    ("127.0.0.1:", "HOST:PORT"),
    ("127.0.0.1:\u0663", "HOST:PORT"),  # an Arabic-Indic digit is a digit to str.isdigit
    ("9102", "HOST:PORT"),
])
def test_parse_addr_rejects_ambiguous_or_malformed(raw: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-addr") as caught:
        parse_addr(raw, "--metrics-addr")
    assert hint in str(caught.value)
