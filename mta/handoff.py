"""Handing a draining engine's queue to the pods that stay, so a scale-down loses nothing.

A draining engine sends its queued messages, in batches, to peers' admin API (`POST
/v1/handoff`, the pool's bearer token): each message as accepted here (DKIM signature included,
so it is never signed twice), its envelope, its arrival time and each recipient's attempts and
retry time. A peer answers only once the batch is fsynced in its own spool; only then is it
deleted here. A message an attempt is running for is left to that attempt; one no peer takes
stays and is delivered here. At-least-once: a crash between the peer's fsync and our delete
can deliver a message twice, never lose it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from mailfleet.mta.addresses import AddressError, Kind, parse_path
from mailfleet.mta.queue import QueueRunner
from mailfleet.mta.spool import QueuedMessage, QueuedRecipient, Spool, SpoolReader

log = logging.getLogger("mailfleet.mta")

BATCH = 100
BATCH_BYTES = 8 * 1024 * 1024
PASS_PAUSE = 2.0


class HandoffError(ValueError):
    """A handoff request that does not hold what it must; the message names the field."""


def encode(msg: QueuedMessage) -> dict[str, Any]:
    return {
        "id": msg.id,
        "mailFrom": msg.mail_from,
        "receivedAt": msg.received_at,
        "client": msg.client,
        "data": base64.b64encode(msg.data).decode(),
        "recipients": [
            {
                "recipient": r.recipient,
                "attempts": r.attempts,
                "nextAttempt": r.next_attempt,
                "lastReply": r.last_reply,
            }
            for r in msg.recipients
        ],
    }


# Bounds of what a peer may hand over: far above real values, so that a number no spool field
# can hold (10**30, NaN, Infinity: a message parked forever) is refused naming the field.
MAX_ATTEMPTS = 1_000_000
MAX_TIME = 253_402_300_799.0  # 9999-12-31, in epoch seconds
MAX_MESSAGES = 10_000
MAX_RECIPIENTS = 100_000

Time = Annotated[float, Field(ge=0, le=MAX_TIME)]


class _Wire(BaseModel):
    # Strict: "3" is not a number and true is not 1; unknown keys are a newer peer's, ignored.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Recipient(_Wire):
    recipient: str = Field(max_length=1000)
    attempts: int = Field(ge=0, le=MAX_ATTEMPTS)
    next_attempt: Time = Field(alias="nextAttempt")
    last_reply: str | None = Field(None, alias="lastReply", max_length=100_000)


class _Message(_Wire):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")
    mail_from: str = Field(alias="mailFrom", max_length=1000)
    received_at: Time = Field(alias="receivedAt")
    client: str | None = Field(None, max_length=1000)
    data: str
    recipients: list[_Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)


class _Handoff(_Wire):
    messages: list[_Message] = Field(max_length=MAX_MESSAGES)


def _where(loc: tuple[int | str, ...]) -> str:
    """messages[0].recipients[1].attempts, from pydantic's ("messages", 0, "recipients", ...)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def _problem(err: ErrorDetails) -> str:
    """What is wrong with a field, in the words a peer's operator searches for."""
    kind, last = err["type"], err["loc"][-1] if err["loc"] else ""
    if last == "id" and kind != "missing":
        return "expected a queue id"
    if last == "recipients" and kind == "too_short":
        return "empty"
    if kind == "missing" or kind.endswith("_type"):
        return "missing or of the wrong type"
    return err["msg"]  # out of bounds, not finite: pydantic says which bound


def _address(value: str, kind: Kind, where: str) -> str:
    """An address as strict as at MAIL and RCPT: a peer cannot slip in what a client could not."""
    try:
        return parse_path(f"<{value}>", kind, smtputf8=True).address
    except AddressError as e:
        raise HandoffError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def decode(body: Any) -> list[QueuedMessage]:
    """The messages of a handoff request: {"messages": [encode(msg), ...]}. HandoffError names
    the first field that is missing, of the wrong type or out of bounds."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise HandoffError('expected JSON {"messages": [...]}')
    try:
        parsed = _Handoff.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        raise HandoffError(f"{_where(err['loc'])}: {_problem(err)}") from None
    out = []
    for i, m in enumerate(parsed.messages):
        where = f"messages[{i}]"
        try:
            data = base64.b64decode(m.data, validate=True)
        except ValueError:
            raise HandoffError(f"{where}.data: not base64") from None
        recipients = [
            QueuedRecipient(
                _address(r.recipient, "recipient", f"{where}.recipients[{j}].recipient"),
                r.attempts,
                r.next_attempt,
                r.last_reply or "",
            )
            for j, r in enumerate(m.recipients)
        ]
        out.append(
            QueuedMessage(
                id=m.id,
                mail_from=_address(m.mail_from, "sender", f"{where}.mailFrom"),
                received_at=m.received_at,
                data=data,
                recipients=recipients,
                client=m.client or "",
            )
        )
    return out


def batches(messages: Sequence[QueuedMessage]) -> list[list[QueuedMessage]]:
    """Messages cut into requests of at most BATCH messages and about BATCH_BYTES."""
    out: list[list[QueuedMessage]] = []
    size = 0
    for m in messages:
        if not out or len(out[-1]) >= BATCH or size + len(m.data) > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(m)
        size += len(m.data)
    return out


Post = Callable[[str, list[QueuedMessage]], Awaitable[bool]]


@dataclass
class HandoffState:
    peers: list[str]
    handed_off: int = 0
    refused: int = 0
    passes: int = 0
    done: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "peers": self.peers,
            "handedOff": self.handed_off,
            "refused": self.refused,
            "passes": self.passes,
            "done": self.done,
            "lastError": self.errors[-1] if self.errors else None,
        }


class HandoffSender:
    """Passes over the spool handing messages to peers, until nothing is left or it is
    cancelled (undrain). What no peer takes is delivered by this engine's queue."""

    def __init__(
        self,
        spool: Spool,
        reader: SpoolReader,
        queue: QueueRunner,
        peers: list[str],
        token: str | None,
        on_handed: Callable[[int], None] = lambda n: None,
        post: Post | None = None,
    ) -> None:
        self.spool = spool
        self.reader = reader
        self.queue = queue
        self.state = HandoffState(list(peers))
        self.token = token
        self.on_handed = on_handed
        self._post = post or self._http_post
        self._session: aiohttp.ClientSession | None = None
        self._next = 0

    async def _http_post(self, peer: str, messages: list[QueuedMessage]) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with self._session.post(
                f"{peer}/v1/handoff",
                json={"messages": [encode(m) for m in messages]},
                headers=headers,
            ) as rsp:
                if rsp.status == 200:
                    return True
                self.state.errors.append(f"{peer}: {rsp.status} {(await rsp.text())[:200]}")
        except (aiohttp.ClientError, TimeoutError) as e:
            self.state.errors.append(f"{peer}: {type(e).__name__}: {e}")
        return False

    async def _send(self, batch: list[QueuedMessage]) -> bool:
        """To the next peer, then the others; True once one has it on disk."""
        peers = self.state.peers
        for k in range(len(peers)):
            peer = peers[(self._next + k) % len(peers)]
            if await self._post(peer, batch):
                self._next = (self._next + k + 1) % len(peers)
                return True
        return False

    async def run(self) -> None:
        try:
            while self.state.peers:
                self.state.passes += 1
                before = self.state.handed_off
                left = await self._pass()
                if left == 0 or self.state.handed_off == before:
                    # Nothing left, or no peer takes anything: the rest is delivered here.
                    break
                await asyncio.sleep(PASS_PAUSE)
            self.state.done = True
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
            await self.reader.close()

    async def _pass(self) -> int:
        """One pass over the spool; how many messages stayed (busy, or refused)."""
        after = ""
        stayed = 0
        while True:
            page = await self.reader.messages_after(after, BATCH * 4)
            if not page:
                return stayed
            after = page[-1].id
            taken = [m for m in page if self.queue.begin_handoff(m.id)]
            stayed += len(page) - len(taken)
            for batch in batches(taken):
                handed = await self._send(batch)
                if handed:
                    await self.spool.remove([m.id for m in batch])
                    self.state.handed_off += len(batch)
                    self.on_handed(len(batch))
                else:
                    self.state.refused += len(batch)
                    stayed += len(batch)
                for m in batch:
                    self.queue.end_handoff(m, handed)
