"""SOCKS5 as the egress proxy speaks it, without any I/O: RFC 1928's method negotiation and
CONNECT request, RFC 1929's username/password subnegotiation, the replies, and who may connect
where.

Each `parse_*` takes the bytes received so far and returns (what was parsed, bytes used), or None
while more bytes are needed; ProtocolError says the bytes can never become a valid message (and,
where the protocol has one, which reply to send before closing).

Only username/password authentication is offered, only CONNECT, and only to IPv4 and IPv6
addresses: the engine resolves MX hosts itself, and a proxy that resolved names would do DNS
from the node on anyone's behalf. A DOMAINNAME request is answered 0x08 (address type not
supported).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from mailfleet.mta.config import EgressClient

VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929's subnegotiation version

METHOD_NO_AUTH = 0x00
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03

ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Reply(enum.IntEnum):
    """RFC 1928 §6's reply field."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class ProtocolError(ValueError):
    """Bytes that are not the expected SOCKS5 message. `reply`: the reply to send before
    closing, when the peer is far enough in the protocol to read one."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# --------------------------------------------------------------------------- greeting
@dataclass(frozen=True)
class Greeting:
    methods: bytes  # the authentication methods the client offers


def parse_greeting(data: bytes) -> tuple[Greeting, int] | None:
    """VER NMETHODS METHODS (RFC 1928 §3)."""
    if not data:
        return None
    if data[0] != VERSION:
        raise ProtocolError(f"not SOCKS5: version {data[0]:#04x} in the greeting")
    if len(data) < 2:
        return None
    end = 2 + data[1]
    if len(data) < end:
        return None
    return Greeting(bytes(data[2:end])), end


def choose_method(greeting: Greeting) -> int:
    """Username/password when offered, else none acceptable (0xFF): no anonymous access."""
    return (
        METHOD_USERNAME_PASSWORD
        if METHOD_USERNAME_PASSWORD in greeting.methods
        else (METHOD_NONE_ACCEPTABLE)
    )


def encode_method(method: int) -> bytes:
    return bytes((VERSION, method))


def encode_greeting(methods: bytes) -> bytes:
    """A client's greeting (for tests and tools)."""
    return bytes((VERSION, len(methods))) + methods


# --------------------------------------------------------------------------- RFC 1929
@dataclass(frozen=True)
class Credentials:
    username: bytes
    password: bytes

    def __repr__(self) -> str:  # never the password, in any log or traceback
        return f"Credentials(username={self.username!r}, password=<{len(self.password)} bytes>)"


def parse_auth(data: bytes) -> tuple[Credentials, int] | None:
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 §2); VER is 0x01."""
    if not data:
        return None
    if data[0] != AUTH_VERSION:
        raise ProtocolError(f"username/password subnegotiation version {data[0]:#04x}, not 0x01")
    if len(data) < 2:
        return None
    ulen = data[1]
    if len(data) < 3 + ulen:
        return None
    plen = data[2 + ulen]
    end = 3 + ulen + plen
    if len(data) < end:
        return None
    return Credentials(bytes(data[2 : 2 + ulen]), bytes(data[3 + ulen : end])), end


def encode_auth_status(ok: bool) -> bytes:
    """0x00 is success; anything else is failure and the server closes (RFC 1929 §2)."""
    return bytes((AUTH_VERSION, 0x00 if ok else 0x01))


def encode_auth(username: bytes, password: bytes) -> bytes:
    """A client's username/password request (for tests and tools)."""
    if not (len(username) <= 255 and len(password) <= 255):
        raise ValueError("RFC 1929 user names and passwords are at most 255 bytes")
    return bytes((AUTH_VERSION, len(username))) + username + bytes((len(password),)) + password


# --------------------------------------------------------------------------- CONNECT
@dataclass(frozen=True)
class Request:
    command: int
    atyp: int
    address: IPAddress | None  # None for a domain name
    domain: bytes | None
    port: int


def parse_request(data: bytes) -> tuple[Request, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4). An unknown address type cannot be
    read past (its length is unknown): ProtocolError with reply 0x08."""
    if not data:
        return None
    if data[0] != VERSION:
        raise ProtocolError(
            f"not SOCKS5: version {data[0]:#04x} in the request", Reply.GENERAL_FAILURE
        )
    if len(data) < 5:
        return None
    command, atyp = data[1], data[3]
    domain: bytes | None = None
    address: IPAddress | None = None
    if atyp == ATYP_IPV4:
        end = 4 + 4
    elif atyp == ATYP_IPV6:
        end = 4 + 16
    elif atyp == ATYP_DOMAIN:
        end = 5 + data[4]
    else:
        raise ProtocolError(
            f"address type {atyp:#04x} is not one of IPv4, domain name, IPv6",
            Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        )
    if len(data) < end + 2:
        return None
    if atyp == ATYP_IPV4:
        address = ipaddress.IPv4Address(bytes(data[4:end]))
    elif atyp == ATYP_IPV6:
        address = ipaddress.IPv6Address(bytes(data[4:end]))
    else:
        domain = bytes(data[5:end])
    port = int.from_bytes(data[end : end + 2], "big")
    return Request(command, atyp, address, domain, port), end + 2


def request_refusal(request: Request) -> tuple[Reply, str] | None:
    """What the proxy answers a request it will not carry out whoever asks, or None."""
    if request.command != CMD_CONNECT:
        return Reply.COMMAND_NOT_SUPPORTED, f"command {request.command:#04x} (only CONNECT)"
    if request.address is None:
        # The engine resolves MX hosts itself; the proxy does no DNS for anyone.
        return Reply.ADDRESS_TYPE_NOT_SUPPORTED, "a domain name (only IPv4 and IPv6 addresses)"
    return None


def encode_request(address: IPAddress, port: int, command: int = CMD_CONNECT) -> bytes:
    """A client's request (for tests and tools)."""
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((VERSION, command, 0x00, atyp)) + address.packed + port.to_bytes(2, "big")


def encode_reply(reply: Reply, bound: tuple[IPAddress, int] | None = None) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT; a failure carries 0.0.0.0:0."""
    address, port = bound or (ipaddress.IPv4Address(0), 0)
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((VERSION, reply, 0x00, atyp)) + address.packed + port.to_bytes(2, "big")


def parse_reply(data: bytes) -> tuple[tuple[Reply | int, IPAddress | None, int], int] | None:
    """A server's reply (for tests and tools): (reply code, bound address, bound port)."""
    if len(data) < 4:
        return None
    atyp = data[3]
    size = {ATYP_IPV4: 4, ATYP_IPV6: 16}.get(atyp)
    if data[0] != VERSION or size is None:
        raise ProtocolError("not a SOCKS5 reply with an IP address")
    if len(data) < 4 + size + 2:
        return None
    raw = bytes(data[4 : 4 + size])
    bound = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    code: Reply | int = Reply(data[1]) if data[1] in Reply._value2member_map_ else data[1]
    return (code, bound, int.from_bytes(data[4 + size : 6 + size], "big")), 6 + size


# --------------------------------------------------------------------------- who may do what
def token_hash(password: bytes) -> str:
    """What EgressClient.tokenSHA256 holds for a password."""
    return hashlib.sha256(password).hexdigest()


# Compared against when the user name is unknown, so that an unknown name takes as long to
# refuse as a wrong password (a name cannot be told to exist by timing).
_NOBODY = token_hash(b"\x00no such client\x00")


def authenticate(clients: Mapping[str, EgressClient], creds: Credentials) -> EgressClient | None:
    """The client whose name and password these are, or None."""
    try:
        name = creds.username.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    client = clients.get(name)
    expected = client.token_sha256 if client is not None else _NOBODY
    ok = hmac.compare_digest(token_hash(creds.password).encode(), expected.encode())
    return client if ok and client is not None else None


@dataclass(frozen=True)
class Decision:
    """Whether a CONNECT goes ahead: the reply to send when not, and why (for logs)."""

    reply: Reply
    reason: str
    result: str  # the metric's result label when refused ("" when allowed)

    @property
    def allowed(self) -> bool:
        return self.reply == Reply.SUCCEEDED


ALLOWED = Decision(Reply.SUCCEEDED, "allowed", "")


def authorize(client: EgressClient, reached: IPAddress, request: Request) -> Decision:
    """Whether `client`, which reached the proxy on `reached` (the source address its mail will
    leave from), may CONNECT as `request` asks."""
    refusal = request_refusal(request)
    if refusal is not None:
        return Decision(refusal[0], refusal[1], "bad_request")
    if reached not in client.addresses:
        return Decision(
            Reply.NOT_ALLOWED,
            f"{client.name} may not send from {reached} (not one of its addresses)",
            "not_allowed",
        )
    if request.port not in client.ports:
        ports = ", ".join(str(p) for p in client.ports)
        return Decision(
            Reply.NOT_ALLOWED,
            f"{client.name} may not connect to port {request.port} (only {ports})",
            "not_allowed",
        )
    if not _routable(request.address):
        return Decision(
            Reply.NOT_ALLOWED, f"{request.address} is not a unicast address", "not_allowed"
        )
    return ALLOWED


def _routable(address: IPAddress | None) -> bool:
    # Multicast, unspecified and broadcast destinations are never an MX; loopback and private
    # ones are left to the engine's routing.allowPrivateMX (tests send to loopback peers).
    if address is None:
        return False
    if address.is_multicast or address.is_unspecified:
        return False
    return not (address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"))


__all__ = [
    "ALLOWED",
    "Credentials",
    "Decision",
    "Greeting",
    "ProtocolError",
    "Reply",
    "Request",
    "authenticate",
    "authorize",
    "choose_method",
    "encode_auth",
    "encode_auth_status",
    "encode_greeting",
    "encode_method",
    "encode_reply",
    "encode_request",
    "parse_auth",
    "parse_greeting",
    "parse_reply",
    "parse_request",
    "request_refusal",
    "token_hash",
]
