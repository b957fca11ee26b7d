"""Forwarding mailed DMARC aggregate reports to the operator (POST /dmarc/<ns>/<domain>), which
parses and counts them: the SMTP reply to the reporter follows the operator's answer, so a
report is accepted only once it is counted, and deferred (the reporter retries) while the
operator cannot be reached. The operator drops a report it counted already (same report id)."""

from __future__ import annotations

import logging

import aiohttp

from mailfleet.mta.submission import reply_text

log = logging.getLogger("mailfleet.mta.dmarc")


class Forwarder:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, url: str, token: str, report: bytes, seconds: float) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                data=report,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as r:
                return r.status, (await r.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as e:
            return 0, str(e) or type(e).__name__

    async def forward(self, url: str, token: str, reports: list[bytes], seconds: float) -> str:
        """Every report file of one message to `url`; the SMTP reply for the message."""
        accepted: list[str] = []
        refused: list[str] = []
        later: list[str] = []
        for report in reports:
            status, text = await self._post(url, token, report, seconds)
            if status == 200:
                accepted.append(text)
            elif status in (400, 413, 422):
                refused.append(text)
            else:
                later.append(f"{status or 'no answer'}: {text}")
        if later:
            log.warning(
                "DMARC report not forwarded; the reporter will retry",
                extra={"url": url, "error": later[0][:300]},
            )
            return (
                f"451 4.4.1 DMARC report not counted yet, try again later ({reply_text(later[0])})"
            )
        if not accepted:
            return (
                f"554 5.6.0 Not a DMARC aggregate report for this address: {reply_text(refused[0])}"
            )
        log.info("DMARC report forwarded", extra={"url": url, "summary": accepted[0][:300]})
        return f"250 2.0.0 Ok: DMARC report counted ({reply_text(accepted[0], 120)})"
