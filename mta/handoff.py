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
from typing import Any

import aiohttp

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


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HandoffError(f"{where}.{name}: missing or of the wrong type")
    return value


def _address(value: str, kind: Kind, where: str) -> str:
    """An address as strict as at MAIL and RCPT: a peer cannot slip in what a client could not."""
    try:
        return parse_path(f"<{value}>", kind, smtputf8=True).address
    except AddressError as e:
        raise HandoffError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def decode(body: Any) -> list[QueuedMessage]:
    """The messages of a handoff request: {"messages": [encode(msg), ...]}."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise HandoffError('expected JSON {"messages": [...]}')
    out = []
    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise HandoffError(f"{where}: expected an object")
        mid = _field(m, "id", str, where)
        if not mid or not mid.isalnum() or len(mid) > 64:
            raise HandoffError(f"{where}.id: expected a queue id")
        try:
            data = base64.b64decode(_field(m, "data", str, where), validate=True)
        except ValueError:
            raise HandoffError(f"{where}.data: not base64") from None
        rcpts = _field(m, "recipients", list, where)
        if not rcpts:
            raise HandoffError(f"{where}.recipients: empty")
        recipients = []
        for j, r in enumerate(rcpts):
            rw = f"{where}.recipients[{j}]"
            if not isinstance(r, dict):
                raise HandoffError(f"{rw}: expected an object")
            recipients.append(
                QueuedRecipient(
                    _address(_field(r, "recipient", str, rw), "recipient", f"{rw}.recipient"),
                    int(_field(r, "attempts", int, rw)),
                    float(_field(r, "nextAttempt", (int, float), rw)),
                    str(r.get("lastReply") or ""),
                )
            )
        out.append(
            QueuedMessage(
                id=mid,
                mail_from=_address(
                    _field(m, "mailFrom", str, where), "sender", f"{where}.mailFrom"
                ),
                received_at=float(_field(m, "receivedAt", (int, float), where)),
                data=data,
                recipients=recipients,
                client=str(m.get("client") or ""),
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
