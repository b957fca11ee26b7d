"""Fixtures shared by the engine tests: a recording MX, and DNS for the ISP simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.isp import IspSimulator
from fixtures.smtppeers import RecordingMX


@pytest.fixture
def mx() -> Iterator[RecordingMX]:
    """The MX the engine under test delivers to (the recipients' domain, example.org)."""
    with RecordingMX("127.0.0.1", hostname="mx.example.org") as m:
        yield m


@pytest.fixture
def dns(tmp_path: Path, isp: IspSimulator) -> Iterator[DnsServer]:
    """dnsmasq serving the MX records of the simulator's providers; each module that uses it
    defines `isp` (the providers it needs, their limits)."""
    server = DnsServer(workdir=tmp_path / "dns")
    isp.add_to_dns(server)
    server.start()
    try:
        yield server
    finally:
        server.close()
