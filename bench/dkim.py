"""DKIM signing throughput on one core: `python -m bench.dkim`.

Rates are signatures per CPU-second of the signing thread (time.thread_time), so other work on
a shared machine slows the run down without skewing the figure much. Prints figures only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import dkim

from mailfleet.mta.config import DKIMConfig, DKIMKey
from mailfleet.mta.dkim import DKIMSigner

KEYS_DIR = Path(__file__).resolve().parent.parent / "examples" / "mta" / "dkim"
KEY_FILES = {
    "rsa-sha256": ("s2026a", KEYS_DIR / "example.test.s2026a.rsa.pem"),
    "ed25519-sha256": ("s2026e", KEYS_DIR / "example.test.s2026e.ed25519.pem"),
}
BenchAlgorithm = Literal["rsa-sha256", "ed25519-sha256", "dkimpy-rsa-sha256"]


def sample_message(size: int = 5000) -> bytes:
    """A plain transactional message of about `size` bytes, CRLF line ends."""
    head = (
        b"From: Shop <orders@example.test>\r\n"
        b"To: Jane Doe <jane@example.org>\r\n"
        b"Subject: Your order 12345 has shipped\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        b"Message-ID: <order-12345@example.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
    )
    line = (
        b"Hello Jane, your order 12345 has shipped.  Track it at "
        b"https://example.test/t/abc?id=1 and reply if anything looks wrong.\r\n"
    )
    return head + line * max(1, (size - len(head)) // len(line))


def _rate(sign: Callable[[bytes], object], message: bytes, seconds: float) -> float:
    sign(message)  # warm up: first-use costs are not throughput
    done = 0
    start = time.thread_time()
    deadline = start + seconds
    while True:
        for _ in range(20):
            sign(message)
        done += 20
        now = time.thread_time()
        if now >= deadline:
            return done / (now - start)


def measure(algorithm: BenchAlgorithm, seconds: float = 3.0, size: int = 5000) -> float:
    """Signatures per second on one core for a ~5 KB message.

    "rsa-sha256" and "ed25519-sha256" use DKIMSigner with the example keys (RSA-2048);
    "dkimpy-rsa-sha256" is dkimpy's stock signer with the same RSA key, for reference.
    """
    message = sample_message(size)
    if algorithm == "dkimpy-rsa-sha256":
        selector, path = KEY_FILES["rsa-sha256"]
        pem = path.read_bytes()

        def stock(msg: bytes) -> object:
            return dkim.sign(
                msg,
                selector.encode(),
                b"example.test",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
            )

        return _rate(stock, message, seconds)
    selector, path = KEY_FILES[algorithm]
    key = DKIMKey(domain="example.test", selector=selector, key_file=path, algorithm=algorithm)
    signer = DKIMSigner(DKIMConfig(keys=[key]))
    return _rate(signer.sign, message, seconds)


def main() -> None:
    print(f"dkim rsa-2048: {measure('rsa-sha256'):.0f} sig/s")
    print(f"dkim ed25519: {measure('ed25519-sha256'):.0f} sig/s")
    stock = measure("dkimpy-rsa-sha256", 2)
    print(f"dkim rsa-2048 (dkimpy stock signer, reference): {stock:.0f} sig/s")


if __name__ == "__main__":
    main()
