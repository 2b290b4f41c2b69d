"""HTTP session bookkeeping in front of the SDK's session manager.

The SDK caps sessions only globally (10,000) and lets any client use or DELETE any session id it learns. Here:
- a session belongs to the token that opened it: a request carrying another token for it gets the same 404 as an
  unknown session (nothing tells the caller the id exists);
- each token (when tokens are on) or each client address (token-less loopback) may hold at most `per_owner` open
  sessions; one more `initialize` gets a 429 with a JSON-RPC error saying how to free one. With tokens on, the
  address is not counted: behind a TLS proxy or an SSH tunnel every client shares one address, and one token's
  sessions must not lock the others out;
- idle sessions are forgotten after `idle_timeout` seconds (the SDK is given the same timeout and closes them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lens_mcp.server.security import TOKEN_SCOPE_KEY, send_json

SESSION_HEADER = b"mcp-session-id"
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_SESSIONS_PER_OWNER = 32


@dataclass
class _Session:
    token: int | None
    client: str
    last_active: float
    in_flight: int = 0


class SessionGuard:
    """ASGI middleware that binds sessions to their token and bounds them per token and per client address."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        per_owner: int = DEFAULT_SESSIONS_PER_OWNER,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_owner < 1:
            raise ValueError("sessions per client must be at least 1")
        self.app = app
        self.per_owner = per_owner
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self._opening: dict[tuple[str, object], int] = {}  # initialize requests not answered yet, per owner key

    # ---- counting ----------------------------------------------------------------------------------------
    def _expire(self) -> None:
        cutoff = self.clock() - self.idle_timeout
        for sid in [s for s, rec in self.sessions.items() if rec.in_flight == 0 and rec.last_active < cutoff]:
            del self.sessions[sid]

    @staticmethod
    def _owner(token: int | None, client: str) -> tuple[str, object]:
        """Who a session counts against: its token, or without tokens its client address."""
        return ("token", token) if token is not None else ("client", client)

    def _held(self, owner: tuple[str, object]) -> int:
        kind, key = owner
        held = sum((rec.token if kind == "token" else rec.client) == key for rec in self.sessions.values())
        return held + self._opening.get(owner, 0)

    # ---- ASGI --------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._expire()
        token = scope.get(TOKEN_SCOPE_KEY)
        client = (scope.get("client") or ("?", 0))[0]
        sid_values = [value for key, value in scope.get("headers", []) if key.lower() == SESSION_HEADER]
        if sid_values:
            await self._existing(sid_values[0].decode("latin-1"), token, scope, receive, send)
        elif scope.get("method") == "POST":
            await self._opening_request(token, client, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _existing(self, sid: str, token: int | None, scope: Scope, receive: Receive, send: Send) -> None:
        record = self.sessions.get(sid)
        if record is None:  # unknown to us: the SDK answers (404 for an unknown id)
            await self.app(scope, receive, send)
            return
        if record.token != token:
            await send_json(
                send, 404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
            )
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        record.in_flight += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            record.in_flight -= 1
            record.last_active = self.clock()
            code = status[0] if status else 0
            if code == 404 or (scope.get("method") == "DELETE" and 200 <= code < 300):
                self.sessions.pop(sid, None)

    async def _opening_request(
        self, token: int | None, client: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        owner = self._owner(token, client)
        if self._held(owner) >= self.per_owner:
            who = "this token" if token is not None else f"client {client}"
            message = (
                f"too many open sessions for {who} ({self.per_owner}); end unused ones (HTTP DELETE with their "
                f"Mcp-Session-Id) or let them expire after {self.idle_timeout:g} s idle"
            )
            await send_json(
                send,
                429,
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}},
                [(b"retry-after", str(int(self.idle_timeout)).encode())],
            )
            return
        keys = (owner,)
        for key in keys:
            self._opening[key] = self._opening.get(key, 0) + 1
        opened: list[str] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for key, value in message.get("headers", []):
                    if key.lower() == SESSION_HEADER:
                        opened.append(value.decode("latin-1"))
                if opened:  # registered before the client can see the id
                    self.sessions[opened[0]] = _Session(token, client, self.clock(), in_flight=1)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            for key in keys:
                self._opening[key] -= 1
                if not self._opening[key]:
                    del self._opening[key]
            if opened and opened[0] in self.sessions:
                record = self.sessions[opened[0]]
                record.in_flight -= 1
                record.last_active = self.clock()
