"""Streamable HTTP transport: the model lives on a GPU box, the agent runs elsewhere.

Every request must carry `Authorization: Bearer <token>` when a token is configured (the environment
variable LENS_MCP_TOKEN or `--token-file`, which may list one token per client). A token is required to bind
anything but a loopback address: the server refuses to start without one. Every request's Host (and Origin, when
sent) must name the bound address and port, so web pages cannot reach a loopback server by DNS rebinding
(server/security.py). Sessions belong to the token that opened them and are bounded per token and per client
address (server/sessions.py). The endpoint is `http://HOST:PORT/mcp`.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from lens_mcp.server.security import RequestGuard, allowed_for
from lens_mcp.server.sessions import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_SESSIONS_PER_OWNER, SessionGuard

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


def check_exposure(host: str, token: str | Sequence[str] | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not token and not is_loopback(host):
        raise TokenError(
            f"--host {host} is reachable from other machines, so a bearer token is required: set {TOKEN_ENV} "
            "or pass --token-file PATH (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or bind 127.0.0.1 and use an SSH tunnel."
        )


def read_tokens(token_file: str | None, environ: dict[str, str] | None = None) -> list[str]:
    """All accepted tokens: a token file may hold several, one per line (one per client, so each client's
    sessions are its own); blank lines and lines starting with # are skipped. Else LENS_MCP_TOKEN."""
    if token_file is None:
        token = read_token(None, environ)
        return [] if token is None else [token]
    read_token(token_file, environ)  # the same checks and messages (missing, unreadable, empty)
    lines = Path(token_file).expanduser().read_text(encoding="utf-8").splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise TokenError(f"--token-file {token_file} holds no token (only blank or # lines)")
    return list(dict.fromkeys(tokens))


def build_http_app(
    server: MCPServer,
    host: str,
    token: str | Sequence[str] | None,
    port: int = 8000,
    *,
    allowed_hosts: Sequence[str] = (),
    sessions_per_client: int = DEFAULT_SESSIONS_PER_OWNER,
    session_idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
) -> Any:
    """The streamable HTTP Starlette app behind the request guard (Host/Origin allow-lists, bearer tokens) and
    the session guard (sessions bound to their token, bounded per token and per client address)."""
    tokens = [token] if isinstance(token, str) else list(token or [])
    allowed = allowed_for(host, port, allowed_hosts)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        host=host.strip("[]"),
        transport_security=allowed.sdk_settings(),  # explicit always: never the SDK's loopback-only default
        session_idle_timeout=session_idle_timeout,
    )
    guarded = SessionGuard(app, per_owner=sessions_per_client, idle_timeout=session_idle_timeout)
    return RequestGuard(guarded, allowed, tokens)


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{MCP_PATH}"


def serve_http(
    server: MCPServer,
    host: str,
    port: int,
    token: str | Sequence[str] | None = None,
    log_level: str = "info",
    **guards: Any,
) -> int:
    """Serve `server` over streamable HTTP until interrupted. Returns the process exit status."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    try:
        check_exposure(host, token)
    except TokenError as exc:
        print(f"lens-mcp: error: {exc}", file=sys.stderr)
        return 2
    tokens = [token] if isinstance(token, str) else list(token or [])
    app = build_http_app(server, host, tokens, port, **guards)
    protection = "bearer token required" if tokens else "no token: loopback only"
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
