"""FIM superseding: a newer FIM request from the same editor cancels its older one still in flight."""

from __future__ import annotations

from fastapi import Request

from models.pool import Generation
from models.request import Request as InternalRequest
from models.upstream_backend import UPSTREAM_USER_AGENT

SupersedeKey = tuple[str, str, str, int | None, str]


class Superseder:
    """Newer FIM requests from the same client cancel that client's older one still in flight.

    Editors fire a FIM request per keystroke and only the newest matters. A client is its dialect,
    address, User-Agent and slot id, and the request must be about the same document (the same
    head of the prefix): two editor windows with one User-Agent, or a script sending FIM requests
    in parallel, must never cancel each other's work. Editors that abort (llama.vim kills curl,
    Continue aborts its fetch) are cancelled by their disconnect whatever this decides.
    """

    DOCUMENT_HEAD_CHARS = 256

    def __init__(self) -> None:
        self.inflight: dict[SupersedeKey, Generation] = {}
        self.superseded = 0

    @staticmethod
    def key(request: Request, dialect: str, fim: InternalRequest, slot: int | None = None) -> SupersedeKey | None:
        """Who is asking about which document; None for a router in front of us (it speaks for many editors)."""
        agent = request.headers.get("user-agent", "")
        if agent == UPSTREAM_USER_AGENT:
            return None
        host = request.client.host if request.client else ""
        return (dialect, host, agent, slot, fim.prefix[: Superseder.DOCUMENT_HEAD_CHARS])

    def claim(self, key: SupersedeKey, gen: Generation) -> None:
        old = self.inflight.get(key)
        if old is not None and old is not gen:
            old.cancel()
            self.superseded += 1
        self.inflight[key] = gen

    def release(self, key: SupersedeKey, gen: Generation) -> None:
        if self.inflight.get(key) is gen:
            del self.inflight[key]
