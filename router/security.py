"""Who may talk to the router and how much: loopback by default, API key, CORS origins, body size.

Written as plain ASGI middleware so that refusals (401, 413) cost nothing per token and come back
in the caller's dialect like every other error.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import PayloadTooLarge, Unauthorized
from router.errors import dialect_for_path, error_response
from router.settings import Settings

# Paths any caller may reach without the key: liveness only, nothing about models or prompts.
# Liveness probes: "/" is also the connection check Claude Code sends (HEAD, without its key).
OPEN_PATHS = frozenset({"/", "/health"})


class InsecureBind(RuntimeError):
    """Refusing to listen beyond this machine without an API key."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to loopback (localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(settings: Settings) -> None:
    """Raise InsecureBind when asked to listen on a non-loopback address with no api_key."""
    if not is_loopback(settings.host) and settings.api_key is None:
        raise InsecureBind(
            f"Refusing to listen on {settings.host}: that address is reachable from other machines and no "
            "API key is set. Set one (ROUTE_API_KEY=... or api_key in the config file), or bind 127.0.0.1."
        )


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request presents: a Bearer token and/or an x-api-key value."""
    keys = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            # The auth scheme is case-insensitive (RFC 9110 section 11.1); the key itself is not.
            if scheme.lower() == b"bearer":
                keys.append(token.strip())
        elif name == b"x-api-key":
            keys.append(value.strip())
    return keys


class ApiKeyMiddleware:
    """Every request must carry the key when one is configured: `Authorization: Bearer <key>`, or
    `x-api-key: <key>` as the Anthropic SDK sends it."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not any(hmac.compare_digest(key, self.expected) for key in presented_keys(scope["headers"])):
            err = Unauthorized("Missing or wrong API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`).")
            await error_response(dialect_for_path(scope["path"]), err, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than the limit of {self.max_bytes} bytes (max_body_bytes).")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await error_response(dialect_for_path(scope["path"]), self.too_large())(scope, receive, send)
                    return
                break
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self.too_large()
            return message

        await self.app(scope, limited_receive, send)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the middleware; CORS outermost so that even refusals carry the CORS headers browsers need."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta"],
            expose_headers=["x-route-label", "x-route-model", "x-route-confidence", "Retry-After"],
        )
