"""The egress proxy's pure parts: SOCKS5 parsing and replies (mailfleet.mta.socks5), who may
connect where, the proxy's config (EgressProxyConfig) and the engine's authFile parsing."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfleet.mta import socks5
from mailfleet.mta.config import (
    ConfigError,
    EgressClient,
    EgressConfig,
    EgressProxyConfig,
    parse_egress_proxy_config,
)
from mailfleet.mta.delivery import ProxyAuth, parse_proxy_auth, read_proxy_auth
from mailfleet.mta.socks5 import Reply

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
HASH = hashlib.sha256(b"s3cret").hexdigest()


def client(
    name: str = "mail/pool-a", addresses: tuple[str, ...] = ("10.0.0.1",), **kw: object
) -> EgressClient:
    return EgressClient.model_validate(
        {"name": name, "tokenSHA256": HASH, "addresses": list(addresses), **kw}
    )


def whole(parse: object, data: bytes) -> object:
    """What `parse` makes of exactly `data`, checking every shorter prefix asks for more."""
    assert callable(parse)
    for i in range(len(data)):
        assert parse(data[:i]) is None, f"a prefix of {i} bytes parsed"
    got = parse(data)
    assert got is not None
    value, used = got
    assert used == len(data)
    # Bytes after the message (pipelined) are left for the next parse.
    again = parse(data + b"\x05\x01")
    assert again is not None and again[1] == len(data)
    return value


# --------------------------------------------------------------------------- greeting
@pytest.mark.parametrize(
    ("methods", "chosen"),
    [
        (b"\x02", 0x02),
        (b"\x00\x02", 0x02),
        (b"\x02\x00\x01", 0x02),
        (b"\x00", 0xFF),  # anonymous only: never served
        (b"\x01", 0xFF),  # GSSAPI
        (b"", 0xFF),  # no method at all
        (bytes(range(256))[:255], 0x02),
        (bytes(b for b in range(256) if b != 2), 0xFF),
    ],
)
def test_method_negotiation(methods: bytes, chosen: int) -> None:
    greeting = whole(socks5.parse_greeting, socks5.encode_greeting(methods))
    assert isinstance(greeting, socks5.Greeting) and greeting.methods == methods
    assert socks5.choose_method(greeting) == chosen
    assert socks5.encode_method(chosen) == bytes((5, chosen))


@pytest.mark.parametrize("first", [0x04, 0x00, 0x01, 0x16, 0x47, 0xFF])
def test_a_greeting_of_another_protocol_is_refused_at_its_first_byte(first: int) -> None:
    # SOCKS4, a TLS ClientHello (0x16), "GET ..." (0x47): no reply to give in SOCKS5 terms.
    with pytest.raises(socks5.ProtocolError, match="not SOCKS5") as e:
        socks5.parse_greeting(bytes((first,)))
    assert e.value.reply is None


# --------------------------------------------------------------------------- RFC 1929
@pytest.mark.parametrize(
    ("user", "password"),
    [
        (b"mail/pool-a", b"s3cret"),
        (b"u", b"p"),
        (b"", b""),
        (b"x" * 255, b"y" * 255),
        (b"a:b", b":"),
    ],
)
def test_username_password_round_trip(user: bytes, password: bytes) -> None:
    creds = whole(socks5.parse_auth, socks5.encode_auth(user, password))
    assert creds == socks5.Credentials(user, password)


def test_credentials_never_show_the_password() -> None:
    creds = socks5.Credentials(b"mail/pool-a", b"s3cret")
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)


@pytest.mark.parametrize("version", [0x00, 0x02, 0x05, 0xFF])
def test_a_subnegotiation_of_another_version_is_refused(version: int) -> None:
    with pytest.raises(socks5.ProtocolError, match="subnegotiation version"):
        socks5.parse_auth(bytes((version, 1, ord("u"), 1, ord("p"))))


def test_auth_status_bytes() -> None:
    assert socks5.encode_auth_status(True) == b"\x01\x00"
    assert socks5.encode_auth_status(False) == b"\x01\x01"
    with pytest.raises(ValueError, match="255"):
        socks5.encode_auth(b"x" * 256, b"p")


# --------------------------------------------------------------------------- requests
@pytest.mark.parametrize(
    ("address", "port"),
    [
        (V4("192.0.2.7"), 25),
        (V4("0.0.0.0"), 0),
        (V4("255.255.255.255"), 65535),
        (V6("2001:db8::25"), 587),
        (V6("::ffff:192.0.2.7"), 465),
    ],
)
def test_connect_requests_by_address_round_trip(address: socks5.IPAddress, port: int) -> None:
    req = whole(socks5.parse_request, socks5.encode_request(address, port))
    assert req == socks5.Request(
        socks5.CMD_CONNECT, 1 if address.version == 4 else 4, address, None, port
    )


def test_a_domain_name_is_read_whole_and_refused_with_0x08() -> None:
    data = b"\x05\x01\x00\x03" + bytes((14,)) + b"mx.example.org" + (25).to_bytes(2, "big")
    req = whole(socks5.parse_request, data)
    assert isinstance(req, socks5.Request)
    assert req.address is None and req.domain == b"mx.example.org" and req.port == 25
    refusal = socks5.request_refusal(req)
    assert refusal is not None and refusal[0] == Reply.ADDRESS_TYPE_NOT_SUPPORTED
    assert socks5.authorize(client(), V4("10.0.0.1"), req).reply == 0x08


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_an_unknown_address_type_is_answered_0x08(atyp: int) -> None:
    with pytest.raises(socks5.ProtocolError) as e:
        socks5.parse_request(bytes((5, 1, 0, atyp, 1, 2, 3, 4, 0, 25)))
    assert e.value.reply == Reply.ADDRESS_TYPE_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (socks5.CMD_CONNECT, Reply.SUCCEEDED),
        (socks5.CMD_BIND, Reply.COMMAND_NOT_SUPPORTED),
        (socks5.CMD_UDP_ASSOCIATE, Reply.COMMAND_NOT_SUPPORTED),
        (0x00, Reply.COMMAND_NOT_SUPPORTED),
        (0x09, Reply.COMMAND_NOT_SUPPORTED),
    ],
)
def test_only_connect_is_carried_out(command: int, reply: Reply) -> None:
    req = whole(socks5.parse_request, socks5.encode_request(V4("192.0.2.7"), 25, command))
    assert isinstance(req, socks5.Request)
    assert socks5.authorize(client(), V4("10.0.0.1"), req).reply == reply


def test_a_request_of_another_version_gets_a_general_failure() -> None:
    with pytest.raises(socks5.ProtocolError) as e:
        socks5.parse_request(b"\x04\x01\x00\x19\xc0\x00\x02\x07\x00")
    assert e.value.reply == Reply.GENERAL_FAILURE


@pytest.mark.parametrize("code", list(Reply))
def test_replies_round_trip(code: Reply) -> None:
    for bound in (None, (V4("10.0.0.1"), 40000), (V6("2001:db8::1"), 1)):
        data = socks5.encode_reply(code, bound)
        parsed = whole(socks5.parse_reply, data)
        assert parsed == (code, bound[0] if bound else V4(0), bound[1] if bound else 0)
        assert data[:3] == bytes((5, code, 0))


# --------------------------------------------------------------------------- garbage
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_ask_for_more_or_are_refused(data: bytes) -> None:
    for parse in (socks5.parse_greeting, socks5.parse_auth, socks5.parse_request):
        try:
            got = parse(data)
        except socks5.ProtocolError:
            continue
        if got is not None:
            assert 0 < got[1] <= len(data)


@given(st.binary(min_size=1, max_size=64))
def test_garbage_after_the_version_byte_never_crashes_the_request_parser(tail: bytes) -> None:
    try:
        got = socks5.parse_request(b"\x05" + tail)
    except socks5.ProtocolError as e:
        assert e.reply in (Reply.ADDRESS_TYPE_NOT_SUPPORTED, Reply.GENERAL_FAILURE)
        return
    if got is not None:
        req = got[0]
        assert 0 <= req.port <= 65535
        assert (req.address is None) == (req.atyp == socks5.ATYP_DOMAIN)


# --------------------------------------------------------------------------- who may do what
CLIENTS = {
    "mail/pool-a": client("mail/pool-a", ("10.0.0.1", "2001:db8::1")),
    "mail/pool-b": client("mail/pool-b", ("10.0.0.2",), ports=[25]),
}


def creds(user: bytes, password: bytes) -> socks5.Credentials:
    return socks5.Credentials(user, password)


@pytest.mark.parametrize(
    ("user", "password", "who"),
    [
        (b"mail/pool-a", b"s3cret", "mail/pool-a"),
        (b"mail/pool-b", b"s3cret", "mail/pool-b"),
        (b"mail/pool-a", b"s3cret2", None),
        (b"mail/pool-a", b"S3cret", None),
        (b"mail/pool-a", b"", None),
        (b"mail/pool-c", b"s3cret", None),  # an unknown name with a right password
        (b"", b"s3cret", None),
        (b"\xff\xfe", b"s3cret", None),  # not ASCII
        (b"MAIL/POOL-A", b"s3cret", None),  # names are exact
    ],
)
def test_authentication(user: bytes, password: bytes, who: str | None) -> None:
    got = socks5.authenticate(CLIENTS, creds(user, password))
    assert (got.name if got else None) == who


@pytest.mark.parametrize(
    ("name", "reached", "address", "port", "reply", "result"),
    [
        ("mail/pool-a", "10.0.0.1", "192.0.2.7", 25, Reply.SUCCEEDED, ""),
        ("mail/pool-a", "10.0.0.1", "192.0.2.7", 465, Reply.SUCCEEDED, ""),
        ("mail/pool-a", "10.0.0.1", "192.0.2.7", 587, Reply.SUCCEEDED, ""),
        ("mail/pool-a", "2001:db8::1", "2001:db8::25", 25, Reply.SUCCEEDED, ""),
        ("mail/pool-a", "10.0.0.1", "192.0.2.7", 80, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-a", "10.0.0.1", "192.0.2.7", 0, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-b", "10.0.0.2", "192.0.2.7", 587, Reply.NOT_ALLOWED, "not_allowed"),
        # Another pool's address: its mail would leave from an address that is not its own.
        ("mail/pool-a", "10.0.0.2", "192.0.2.7", 25, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-b", "10.0.0.1", "192.0.2.7", 25, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-a", "10.0.0.1", "224.0.0.1", 25, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-a", "10.0.0.1", "0.0.0.0", 25, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-a", "10.0.0.1", "255.255.255.255", 25, Reply.NOT_ALLOWED, "not_allowed"),
        ("mail/pool-a", "2001:db8::1", "::", 25, Reply.NOT_ALLOWED, "not_allowed"),
    ],
)
def test_authorization(
    name: str, reached: str, address: str, port: int, reply: Reply, result: str
) -> None:
    request = socks5.Request(socks5.CMD_CONNECT, 1, ipaddress.ip_address(address), None, port)
    decision = socks5.authorize(CLIENTS[name], ipaddress.ip_address(reached), request)
    assert (decision.reply, decision.result) == (reply, result)
    assert decision.allowed == (reply == Reply.SUCCEEDED)
    assert "s3cret" not in decision.reason


def test_token_hash_is_the_config_field() -> None:
    assert socks5.token_hash(b"s3cret") == HASH


# --------------------------------------------------------------------------- the proxy's config
def proxy_config(text: str) -> EgressProxyConfig:
    return parse_egress_proxy_config(textwrap.dedent(text), "proxy.yaml")


def test_a_full_proxy_config_and_its_defaults() -> None:
    cfg = proxy_config(
        f"""
        port: 10080
        connectTimeout: 5s
        idleTimeout: 2m
        clients:
          - name: mail/pool-a
            tokenSHA256: {HASH}
            addresses: [10.0.0.1, "2001:db8::1"]
            maxConnections: 50
          - name: mail/pool-b
            tokenSHA256: {HASH}
            addresses: [10.0.0.2]
            ports: [25]
        """
    )
    assert cfg.port == 10080 and cfg.listen_admin == "0.0.0.0:9481"
    assert (cfg.connect_timeout, cfg.idle_timeout, cfg.drain_timeout) == (5, 120, 25)
    assert cfg.max_connections == 4096
    a, b = cfg.clients
    assert a.ports == [25, 465, 587] and a.max_connections == 50
    assert b.ports == [25] and b.max_connections == 1000
    assert a.addresses == [V4("10.0.0.1"), V6("2001:db8::1")]
    dumped = cfg.model_dump(mode="json", by_alias=True)
    assert {
        "adminListen",
        "maxConnections",
        "connectTimeout",
        "idleTimeout",
        "drainTimeout",
    } <= set(dumped)
    assert dumped["clients"][0]["tokenSHA256"] == HASH
    assert EgressProxyConfig.model_validate(dumped) == cfg


def test_the_admin_host_is_the_pods() -> None:
    cfg = parse_egress_proxy_config("adminListen: 0.0.0.0:9999\nclients: []\n", "p", "10.1.2.3")
    assert cfg.listen_admin == "10.1.2.3:9999"
    cfg = parse_egress_proxy_config("clients: []\n", "p", "fd00::5")
    assert cfg.listen_admin == "[fd00::5]:9481"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            f"""
            clients:
              - {{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.1, 10.0.0.2]}}
              - {{name: a/y, tokenSHA256: {HASH}, addresses: [10.0.0.3, 10.0.0.1]}}
            """,
            "clients[1].addresses: 10.0.0.1 is also clients[0]'s",
        ),
        (
            f"""
            clients:
              - {{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.1]}}
              - {{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.2]}}
            """,
            "clients[1].name: 'a/x' is also clients[0]'s",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH.upper()}, addresses: [10.0.0.1]}}]",
            "clients.0.tokenSHA256: expected the SHA-256",
        ),
        (
            "clients: [{name: a/x, tokenSHA256: abc, addresses: [10.0.0.1]}]",
            "clients.0.tokenSHA256: expected the SHA-256",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.1, 10.0.0.1]}}]",
            "clients.0.addresses: 10.0.0.1 is listed twice",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH}, addresses: []}}]",
            "clients.0.addresses",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH}, addresses: [mx.example.org]}}]",
            "clients.0.addresses.0",
        ),
        (
            f"clients: [{{name: 'a:x', tokenSHA256: {HASH}, addresses: [10.0.0.1]}}]",
            "clients.0.name",
        ),
        (
            f"clients: [{{name: '', tokenSHA256: {HASH}, addresses: [10.0.0.1]}}]",
            "clients.0.name",
        ),
        (
            f"clients: [{{name: {'x' * 256}, tokenSHA256: {HASH}, addresses: [10.0.0.1]}}]",
            "clients.0.name",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.1], ports: [0]}}]",
            "clients.0.ports.0",
        ),
        (
            f"clients: [{{name: a/x, tokenSHA256: {HASH}, addresses: [10.0.0.1], ports: []}}]",
            "clients.0.ports",
        ),
        ("port: 70000\nclients: []", "port"),
        ("adminListen: nowhere\nclients: []", "adminListen"),
        ("connectTimeout: 0\nclients: []", "connectTimeout"),
        ("idleTimeout: soon\nclients: []", "idleTimeout"),
        ("maxConnections: 0\nclients: []", "maxConnections"),
        ("clients: []\nlisten: x", "listen: unknown field"),
        ("port: 1080", "clients: field required"),
    ],
)
def test_bad_proxy_configs_name_the_field(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid egress proxy config") as e:
        proxy_config(body)
    assert message in str(e.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "clients: [\n", "a: &x 1\nb: *x\n"])
def test_a_proxy_config_that_is_no_mapping_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"proxy\.yaml"):
        parse_egress_proxy_config(text, "proxy.yaml")


# --------------------------------------------------------------------------- the engine's side
def test_auth_file_is_allowed_with_any_mode() -> None:
    for mode in ("bind", "socks5"):
        cfg = EgressConfig.model_validate(
            {"mode": mode, "proxy": "socks5://10.0.0.1:1080", "authFile": "/etc/egress/auth"}
        )
        assert cfg.auth_file == Path("/etc/egress/auth")
        assert cfg.model_dump(by_alias=True, mode="json")["authFile"] == "/etc/egress/auth"


@pytest.mark.parametrize(
    ("text", "auth"),
    [
        (b"mail/pool-a:s3cret\n", ProxyAuth("mail/pool-a", "s3cret")),
        (b"mail/pool-a:s3:cr:et", ProxyAuth("mail/pool-a", "s3:cr:et")),
        (b"  u:p  \r\n", ProxyAuth("u", "p")),
    ],
)
def test_auth_file_lines(text: bytes, auth: ProxyAuth) -> None:
    assert parse_proxy_auth(text) == auth
    assert auth.password not in repr(auth)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"\n",
        b"nocolon",
        b":p",
        b"u:",
        b"u:p\nv:q",
        b"u:p q",
        "u:pé".encode(),
        b"u:" + b"p" * 256,
    ],
)
def test_bad_auth_files_name_the_field(text: bytes) -> None:
    with pytest.raises(ValueError, match=r"delivery\.egress\.authFile") as e:
        parse_proxy_auth(text)
    assert "p q" not in str(e.value)


def test_auth_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("mail/pool-a:s3cret\n")
    assert read_proxy_auth(path) == ProxyAuth("mail/pool-a", "s3cret")
    with pytest.raises(ValueError, match=r"delivery.egress.authFile .*cannot read it"):
        read_proxy_auth(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match=r"delivery.egress.authFile: .* is a FIFO"):
        read_proxy_auth(tmp_path / "fifo")
