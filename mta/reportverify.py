"""DKIM verification of the reports anyone may mail to a feedback or DMARC report address,
bounded: such a message is a stranger's, and each signature costs a DNS lookup, an RSA
verification and dkimpy's parse of the header (quadratic in a folded field's length).

- Only signatures whose d= is (or is under) a domain that would count are verified, at most
  MAX_SIGNATURES of them; the others are never looked at by dkimpy.
- A header section over MAX_HEADER_BYTES (or MAX_HEADER_LINES lines) is not verified at all:
  reports have small headers.
- Verification runs on a small executor of its own, never the default one, with a bound on the
  verifications waiting or running, in all and per client: past either, `Busy` (451 4.3.2).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dkim

MAX_SIGNATURES = 5
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 1000
THREADS = 2
MAX_PENDING = 16
MAX_PENDING_PER_CLIENT = 2

_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)")

TxtLookup = Callable[..., bytes | None]


class Busy(Exception):
    """Too many verifications waiting: the client should try again later."""


class HeaderTooLarge(Exception):
    """The header section is larger than a report's; the message says by how much."""


def _under(domain: str, domains: frozenset[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def select_signatures(data: bytes, wanted: frozenset[str]) -> bytes | None:
    """`data` with only the DKIM-Signature fields worth verifying (d= under `wanted`, the first
    MAX_SIGNATURES of them) left in its header, every other field and the body unchanged; None
    when there is none. Raises HeaderTooLarge. Linear in the header's size."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    if len(head) > MAX_HEADER_BYTES:
        raise HeaderTooLarge(f"header over {MAX_HEADER_BYTES} bytes")
    lines = head.split(b"\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise HeaderTooLarge(f"header over {MAX_HEADER_LINES} lines")
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif line:
            fields.append([line])
    kept: list[bytes] = []
    chosen = 0
    for f in fields:
        name, _, value = f[0].partition(b":")
        if name.strip().lower() == b"dkim-signature":
            m = _D_TAG.search(b"".join([value, *f[1:]]))
            domain = m.group(1).decode("ascii", "replace").lower().rstrip(".") if m else ""
            if chosen >= MAX_SIGNATURES or not _under(domain, wanted):
                continue
            chosen += 1
        kept.append(b"\r\n".join(f) + b"\r\n")
    if not chosen:
        return None
    return b"".join(kept) + (data[end + 2 :] if end >= 0 else b"")


def verified_domains(data: bytes, wanted: frozenset[str], txt_lookup: TxtLookup) -> set[str]:
    """The d= domains (lower case) of the selected signatures of `data` that verify. Blocking:
    run it on ReportVerifier's threads."""
    selected = select_signatures(data, wanted)
    if selected is None:
        return set()
    try:
        verifier = dkim.DKIM(selected)
    except (dkim.DKIMException, ValueError):
        return set()
    count = sum(1 for name, _ in verifier.headers if name.strip().lower() == b"dkim-signature")
    found: set[str] = set()
    for idx in range(count):
        try:
            ok = verifier.verify(idx=idx, dnsfunc=txt_lookup)
        except (dkim.DKIMException, ValueError, IndexError, UnicodeError):
            continue
        if ok and verifier.domain:
            found.add(verifier.domain.decode("ascii", "replace").lower())
    return found


class ReportVerifier:
    """Runs `verified_domains` on threads of its own, within the pending bounds."""

    def __init__(
        self,
        threads: int = THREADS,
        max_pending: int = MAX_PENDING,
        max_per_client: int = MAX_PENDING_PER_CLIENT,
    ) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self.max_pending = max_pending
        self.max_per_client = max_per_client
        self.pending = 0
        self._per_client: dict[str, int] = {}

    async def verify(
        self, data: bytes, wanted: frozenset[str], client: str, txt_lookup: TxtLookup
    ) -> set[str]:
        """Raises Busy (past the bounds) or HeaderTooLarge (checked before anything waits)."""
        if not wanted:
            return set()
        end = data.find(b"\r\n\r\n")
        if (end if end >= 0 else len(data)) > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"header over {MAX_HEADER_BYTES} bytes")
        mine = self._per_client.get(client, 0)
        if self.pending >= self.max_pending or mine >= self.max_per_client:
            raise Busy("too many DKIM verifications waiting")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, "report-dkim")
        loop = asyncio.get_running_loop()
        self.pending += 1
        self._per_client[client] = mine + 1

        def release() -> None:
            self.pending -= 1
            left = self._per_client.pop(client, 1) - 1
            if left > 0:
                self._per_client[client] = left

        job = self._executor.submit(verified_domains, data, wanted, txt_lookup)
        # Counted until the work is over, not until the client stops waiting: a client that
        # leaves cancels a job not started yet, and one running still counts while it runs.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
