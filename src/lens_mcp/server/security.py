"""HTTP request checks in front of the MCP endpoint: Host/Origin allow-lists (DNS rebinding) and bearer tokens.

A token-less server bound to loopback is reachable by every web page the user visits, through DNS rebinding:
the page's own name resolves to 127.0.0.1, so the browser sends `Host: evil.example` and
`Origin: http://evil.example`. So every request's Host must name the bound address and port (in one of its
spellings), and an Origin, when sent, must be that same address. A server on a wildcard address (0.0.0.0, ::)
cannot know the names it is reached under: there the Host check covers only names given with `--allowed-host`,
and the bearer token (required off loopback) is the protection; the Origin check stays on.

Authorization follows RFC 7235: the scheme is case-insensitive (`bearer`, `Bearer`), credentials follow after
one or more spaces, and a request with more than one Authorization header is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_SCOPE_KEY = "lens_mcp.token_id"
"""ASGI scope key under which the guard records which configured token (its index) authorized a request."""

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").lower()


def _bracketed(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(_normalize_host(host)).is_unspecified
    except ValueError:
        return False


def host_forms(host: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    """The Host header values that name this server: the bound address and port, in each spelling.

    127.0.0.1 and localhost and ::1 name one another (`localhost:8000` reaches a 127.0.0.1:8000 bind); any
    other address stands only for itself. Names from `extra` (e.g. a DNS name or an SSH tunnel's
    `localhost:9000`) are added as given, with this port when they carry none. Port 80 also allows the bare
    name, as clients omit the default port."""
    name = _normalize_host(host)
    names: list[str] = []
    if not is_wildcard(name):
        names.append(name)
        if name in LOOPBACK_NAMES:
            names += sorted(LOOPBACK_NAMES - {name})
    forms: list[str] = []
    for item in names:
        forms.append(f"{_bracketed(item)}:{port}")
        if port == 80:
            forms.append(_bracketed(item))
    for item in extra:
        text = item.strip().lower()
        if not text:
            continue
        has_port = text.rsplit(":", 1)[-1].isdigit() and (not text.startswith("[") or "]:" in text)
        if ":" in text and not text.startswith("[") and text.count(":") > 1:  # a bare IPv6 address
            text, has_port = f"[{text}]", False
        forms.append(text if has_port else f"{text}:{port}")
    return list(dict.fromkeys(forms))


def origin_forms(hosts: Iterable[str]) -> list[str]:
    return [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]


@dataclass(frozen=True)
class Allowed:
    """What the guard accepts. `hosts` None: any Host (a wildcard bind without --allowed-host)."""

    hosts: frozenset[str] | None
    origins: frozenset[str]

    def sdk_settings(self) -> TransportSecuritySettings:
        """The same lists for the SDK's own check (explicit, never its loopback-only default)."""
        if self.hosts is None:
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=sorted(self.hosts),
            allowed_origins=sorted(self.origins),
        )


def allowed_for(host: str, port: int, extra_hosts: Sequence[str] = ()) -> Allowed:
    forms = host_forms(host, port, extra_hosts)
    hosts = None if is_wildcard(host) and not extra_hosts else frozenset(forms)
    return Allowed(hosts, frozenset(origin_forms(forms)))


def _headers(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", []) if key.lower() == name]


def token_id(scope: Scope, tokens: Sequence[str]) -> int | None | str:
    """The index of the token a request carries, or a reason (str) why it is not authorized."""
    values = _headers(scope, b"authorization")
    if not values:
        return "missing bearer token"
    if len(values) > 1:
        return "more than one Authorization header"
    scheme, _, credentials = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return "not a Bearer authorization"
    credentials = credentials.lstrip(b" ")
    found: int | None = None
    for index, token in enumerate(tokens):  # compare with every token: the time taken says nothing about which
        if hmac.compare_digest(credentials, token.encode()):
            found = index
    return "wrong bearer token" if found is None else found


async def send_json(send: Send, status: int, payload: dict[str, object], headers: Sequence[tuple[bytes, bytes]] = ()):
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: Host/Origin allow-lists first, then the bearer token (when tokens are configured).
    Refusals answer before the body is read. Lifespan events pass through."""

    def __init__(self, app: ASGIApp, allowed: Allowed, tokens: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = allowed
        self.tokens = list(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._check_names(scope)
        if refusal is None and self.tokens:
            found = token_id(scope, self.tokens)
            if isinstance(found, str):
                refusal = (
                    401,
                    "unauthorized",
                    f"{found}: send one 'Authorization: Bearer <token>' header",
                    [(b"www-authenticate", b'Bearer realm="lens-mcp"')],
                )
            else:
                scope[TOKEN_SCOPE_KEY] = found
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        status, error, message, headers = refusal
        await send_json(send, status, {"error": error, "message": message}, headers)

    def _check_names(self, scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        hosts = _headers(scope, b"host")
        if self.allowed.hosts is not None:
            if len(hosts) != 1 or hosts[0].decode("latin-1").strip().lower() not in self.allowed.hosts:
                return (421, "invalid_host", "the Host header does not name this server's bound address", [])
        origins = _headers(scope, b"origin")
        if len(origins) > 1 or (origins and origins[0].decode("latin-1").strip().lower() not in self.allowed.origins):
            return (403, "invalid_origin", "requests from web pages of other origins are refused", [])
        # The SDK compares Host and Origin exactly: hand them on as checked here (lower case, trimmed).
        scope["headers"] = [
            (key, value.strip().lower() if key.lower() in (b"host", b"origin") else value)
            for key, value in scope.get("headers", [])
        ]
        return None
