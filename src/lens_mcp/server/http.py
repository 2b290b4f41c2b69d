"""Streamable HTTP transport: the model lives on a GPU box, the agent runs elsewhere.

Every request must carry `Authorization: Bearer <token>` when a token is configured (the environment
variable LENS_MCP_TOKEN or `--token-file`). A token is required to bind anything but a loopback
address: the server refuses to start without one. The endpoint is `http://HOST:PORT/mcp`.
"""

from __future__ import annotations

import copy
import hmac
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

TOKEN_ENV = "LENS_MCP_TOKEN"
MCP_PATH = "/mcp"


class TokenError(ValueError):
    """The token configuration is unusable (empty file, missing file, non-loopback without a token)."""


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def read_token(token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token: from `token_file` when given, else from LENS_MCP_TOKEN; None when neither is set."""
    environ = dict(os.environ) if environ is None else environ
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"--token-file {path}: cannot read it ({exc.strerror or exc})") from exc
        if not token:
            raise TokenError(f"--token-file {path} is empty; put the bearer token in it")
        return token
    token = environ.get(TOKEN_ENV)
    if token is None:
        return None
    token = token.strip()
    if not token:
        raise TokenError(f"{TOKEN_ENV} is set but empty; unset it or give it the bearer token")
    return token


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise TokenError(
            f"--host {host} is reachable from other machines, so a bearer token is required: set {TOKEN_ENV} "
            "or pass --token-file PATH (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or bind 127.0.0.1 and use an SSH tunnel."
        )


class BearerTokenMiddleware:
    """ASGI middleware: HTTP requests without `Authorization: Bearer <token>` get a 401 JSON answer."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)  # lifespan events pass through
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {"error": "unauthorized", "message": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="lens-mcp"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def build_http_app(server: MCPServer, host: str, token: str | None) -> Any:
    """The streamable HTTP Starlette app, wrapped in the bearer-token check when a token is configured."""
    security = None
    if not is_loopback(host):
        # The SDK's DNS-rebinding protection (Host/Origin allow-lists) is on by default only for loopback
        # binds; a server exposed on a network address is reached under whatever name the client uses, and
        # the bearer token is what protects it (a browser page cannot forge the header).
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host.strip("[]"), transport_security=security)
    return BearerTokenMiddleware(app, token) if token is not None else app


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{MCP_PATH}"


def serve_http(server: MCPServer, host: str, port: int, token: str | None = None, log_level: str = "info") -> int:
    """Serve `server` over streamable HTTP until interrupted. Returns the process exit status."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    try:
        check_exposure(host, token)
    except TokenError as exc:
        print(f"lens-mcp: error: {exc}", file=sys.stderr)
        return 2
    app = build_http_app(server, host, token)
    protection = "bearer token required" if token is not None else "no token: loopback only"
    print(
        f"lens-mcp: serving MCP over streamable HTTP at {url_for(host, port)} ({protection})",
        file=sys.stderr,
        flush=True,
    )
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout stays clean, as on stdio
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=port,
        log_level=log_level.lower(),
        log_config=log_config,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0
