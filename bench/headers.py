"""Header parsing on long folded fields (issue 21): the time per byte of what the engine does
with a message's header block from DATA to the spool, for folded headers of 10 KB, 100 KB and
1 MB. Linear parsing keeps it flat (or falling: a signature's fixed cost weighs on the smallest
most); the former quadratic unfolding took 8.4 s for 1.2 MB.

The header is the attacker's shape: 4-octet continuation lines (" a" CRLF), half in a signed
Subject, half in an X-Mailfleet-* field (which forces the header rewrite). Each round runs the
size and field-count check at DATA, the header rewrite and DKIM signing (RSA-2048).

    python -m bench.headers [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mailfleet.mta.config import DKIMConfig, HeadersConfig
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.headers import add_headers, header_block_refusal

SIZES = ((10 * 1024, "10KB"), (100 * 1024, "100KB"), (1024 * 1024, "1MB"))
CONFIG = HeadersConfig(feedback_id="{campaign}:mailfleet")


def message(size: int, domain: str) -> bytes:
    """A message whose header block is about `size` octets, nearly all continuation lines."""
    lines = max(1, (size - 100) // 8)
    return (
        f"From: <app@{domain}>\r\nTo: <x@example.org>\r\n".encode()
        + b"Subject: s\r\n"
        + b" a\r\n" * lines
        + b"X-Mailfleet-Campaign: c\r\n"
        + b" a\r\n" * lines
        + b"\r\nhello\r\n"
    )


def _signer() -> tuple[DKIMSigner, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fixtures.keys import RSA_KEY  # the tests' key: no key generation in a benchmark

    return DKIMSigner(DKIMConfig(keys=[RSA_KEY])), RSA_KEY.domain


def measure(quick: bool = False) -> dict[str, float]:
    """Nanoseconds per header byte for each size (best of a few rounds)."""
    signer, domain = _signer()
    budget = 0.2 if quick else 1.0  # seconds of work per size
    out: dict[str, float] = {}
    for size, label in SIZES:
        data = message(size, domain)
        head = data.index(b"\r\n\r\n") + 2
        best = float("inf")
        spent = 0.0
        rounds = 0
        while rounds < 3 or (spent < budget and rounds < 1000):
            t0 = time.perf_counter()
            assert header_block_refusal(data, max_bytes=2 * size, max_fields=1000) is None
            rewritten = add_headers(
                data, CONFIG, recipients=["x@example.org"], message_id="q", token_key=None
            ).data
            assert signer.sign_result(rewritten, crlf=True).header
            took = time.perf_counter() - t0
            best = min(best, took)
            spent += took
            rounds += 1
        out[label] = best / head * 1e9
    return out


def lines(quick: bool = False) -> list[str]:
    per_byte = measure(quick)
    figures = ", ".join(f"{label} {ns:.1f} ns/byte" for label, ns in per_byte.items())
    ratio = per_byte["1MB"] / per_byte["10KB"]
    # Flat or falling: a signature's fixed cost weighs on the smallest most.
    return [f"headers: folded {figures} (1MB/10KB per byte: {ratio:.2f})"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds per size")
    for line in lines(ap.parse_args().quick):
        print(line, flush=True)


if __name__ == "__main__":
    main()
