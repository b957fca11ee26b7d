"""dnsmasq serves what a test adds, and nothing else, as a real resolver sees it."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import dns.reversename
import pytest
from fixtures.dnsserver import split_txt
from fixtures.peers import DnsServer


def test_mx_a_aaaa_and_ptr(dns_server: DnsServer) -> None:
    dns_server.add_mx("example.com", "mx1.example.com", 10)
    dns_server.add_mx("example.com", "mx2.example.com", 20)
    dns_server.add_a("mx1.example.com", "127.0.0.5")
    dns_server.add_aaaa("mx1.example.com", "::1")
    dns_server.add_ptr("127.0.0.6", "mta6.example.com")
    res = dns_server.resolver()

    mx = sorted((r.preference, r.exchange.to_text()) for r in res.resolve("example.com", "MX"))
    assert mx == [(10, "mx1.example.com."), (20, "mx2.example.com.")]
    assert [r.address for r in res.resolve("mx1.example.com", "A")] == ["127.0.0.5"]
    assert [r.address for r in res.resolve("mx1.example.com", "AAAA")] == ["::1"]
    ptr = res.resolve(dns.reversename.from_address("127.0.0.6"), "PTR")
    assert [r.target.to_text() for r in ptr] == ["mta6.example.com."]


def test_answers_are_authoritative_with_the_configured_ttl() -> None:
    with DnsServer(ttl=42) as server:
        server.add_a("host.example.com", "127.0.0.9")
        query = dns.message.make_query("host.example.com", "A")
        reply = dns.query.udp(query, server.host, port=server.port, timeout=2)
        assert reply.flags & dns.flags.AA
        assert reply.answer[0].ttl == 42
        # and over TCP, which large answers fall back to
        reply = dns.query.tcp(query, server.host, port=server.port, timeout=2)
        assert [r.address for r in reply.answer[0]] == ["127.0.0.9"]


def test_unknown_names_are_nxdomain_and_known_names_nodata(dns_server: DnsServer) -> None:
    dns_server.add_a("only-a.example.net", "127.0.0.7")
    res = dns_server.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nothing.example.net", "MX")
    # a name with an A but no MX: NODATA, so an MTA falls back to the A record (RFC 5321 §5.1)
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("only-a.example.net", "MX")


def test_null_mx(dns_server: DnsServer) -> None:
    dns_server.add_mx("nomail.example.org", ".", 0)
    (rr,) = dns_server.resolver().resolve("nomail.example.org", "MX")
    assert (rr.preference, rr.exchange.to_text()) == (0, ".")


def test_long_txt_reassembles_to_the_dkim_key(dns_server: DnsServer) -> None:
    key = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9
    assert len(key) > 255
    dns_server.add_txt("s1._domainkey.example.com", key)
    (rr,) = dns_server.resolver().resolve("s1._domainkey.example.com", "TXT")
    assert all(len(s) <= 255 for s in rr.strings)
    assert len(rr.strings) == 2
    assert b"".join(rr.strings).decode() == key


def test_txt_with_quotes_and_explicit_strings(dns_server: DnsServer) -> None:
    dns_server.add_txt("q.example.com", 'say "hi", \\ok')
    dns_server.add_txt("multi.example.com", ["v=spf1", " -all"])
    res = dns_server.resolver()
    assert res.resolve("q.example.com", "TXT")[0].strings == (b'say "hi", \\ok',)
    assert res.resolve("multi.example.com", "TXT")[0].strings == (b"v=spf1", b" -all")


def test_split_txt_never_exceeds_255_bytes() -> None:
    text = "é" * 300
    chunks = split_txt(text)
    assert "".join(chunks) == text
    assert all(len(c.encode()) <= 255 for c in chunks)


def test_records_added_after_start_restart_on_the_same_port(dns_server: DnsServer) -> None:
    port, pid = dns_server.port, dns_server.pid
    dns_server.add_mx("late.example.com", "mx.late.example.com", 5)
    assert dns_server.port == port
    assert dns_server.pid != pid
    (rr,) = dns_server.resolver().resolve("late.example.com", "MX")
    assert rr.exchange.to_text() == "mx.late.example.com."


def test_dnsbl_listing(dns_server: DnsServer) -> None:
    qname = dns_server.add_dnsbl_listing("bl.example", "203.0.113.10", reason="listed: spam")
    assert qname == "10.113.0.203.bl.example"
    res = dns_server.resolver()
    assert [r.address for r in res.resolve(qname, "A")] == ["127.0.0.2"]
    assert res.resolve(qname, "TXT")[0].strings == (b"listed: spam",)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("11.113.0.203.bl.example", "A")


def test_other_loopback_address() -> None:
    with DnsServer("127.0.0.53") as server:
        server.add_a("x.example", "127.0.0.1")
        assert server.resolver().resolve("x.example", "A")[0].address == "127.0.0.1"
        assert server.nameserver == f"127.0.0.53:{server.port}"
