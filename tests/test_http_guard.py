"""HTTP request and session guards: DNS rebinding (Host/Origin), RFC 7235 bearer parsing, session ownership and
bounds. In-process ASGI tests on a stand-in endpoint, plus real token-less servers on three loopback names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from lens_mcp.server.http import TokenError, read_tokens
from lens_mcp.server.security import RequestGuard, allowed_for, host_forms
from lens_mcp.server.sessions import SessionGuard

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


class FakeEndpoint:
    """Stands in for the SDK's session manager: a POST without a session id opens one; DELETE ends it."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.reached = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached += 1
        headers = dict(scope["headers"])
        sid = headers.get(b"mcp-session-id", b"").decode()
        status, extra = 200, []
        if not sid and scope["method"] == "POST":
            sid = uuid.uuid4().hex
            self.open.add(sid)
            extra = [(b"mcp-session-id", sid.encode())]
        elif sid and sid not in self.open:
            status = 404
        elif sid and scope["method"] == "DELETE":
            self.open.discard(sid)
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"{}"})


def client_for(app: object, client_addr: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_addr, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8123")


# ---- Host / Origin ---------------------------------------------------------------------------------------
def test_host_forms_are_the_bound_address_and_port() -> None:
    assert set(host_forms("127.0.0.1", 8123)) == {"127.0.0.1:8123", "localhost:8123", "[::1]:8123"}
    assert host_forms("127.0.0.2", 8123) == ["127.0.0.2:8123"]
    assert set(host_forms("LocalHost", 80)) >= {"localhost:80", "localhost", "127.0.0.1:80"}
    assert host_forms("0.0.0.0", 8123) == []
    assert host_forms("0.0.0.0", 8123, ["gpu.example.org", "localhost:9000"]) == [
        "gpu.example.org:8123",
        "localhost:9000",
    ]
    assert allowed_for("0.0.0.0", 8123).hosts is None  # a wildcard bind: the token protects it
    settings = allowed_for("127.0.0.2", 8123).sdk_settings()
    assert settings.enable_dns_rebinding_protection and settings.allowed_hosts == ["127.0.0.2:8123"]


@pytest.mark.parametrize("bound", ["127.0.0.1", "127.0.0.2", "localhost"])
async def test_forged_host_or_origin_is_refused_without_a_token(bound: str) -> None:
    inner = FakeEndpoint()
    app = RequestGuard(inner, allowed_for(bound, 8123))
    async with client_for(app) as http:
        forged = await http.post("/mcp", json=INITIALIZE, headers={**ACCEPT, "Host": "evil.example"})
        assert forged.status_code == 421
        forged_port = await http.post("/mcp", json=INITIALIZE, headers={**ACCEPT, "Host": f"{bound}:9999"})
        assert forged_port.status_code == 421
        origin = await http.post(
            "/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Host": f"{bound}:8123", "Origin": "http://evil.example"},
        )
        assert origin.status_code == 403
        null_origin = await http.post(
            "/mcp", json=INITIALIZE, headers={**ACCEPT, "Host": f"{bound}:8123", "Origin": "null"}
        )
        assert null_origin.status_code == 403
        assert inner.reached == 0
        good = await http.post(
            "/mcp",
            json=INITIALIZE,
            headers={**ACCEPT, "Host": f"{bound.upper()}:8123", "Origin": f"http://{bound}:8123"},
        )
        assert good.status_code == 200 and inner.reached == 1


async def test_bearer_scheme_is_case_insensitive_and_two_headers_are_refused() -> None:
    inner = FakeEndpoint()
    app = RequestGuard(inner, allowed_for("127.0.0.1", 8123), ["tok-a"])
    async with client_for(app) as http:
        for value in ("bearer tok-a", "BEARER tok-a", "Bearer   tok-a"):
            answer = await http.post("/mcp", json=INITIALIZE, headers={**ACCEPT, "Authorization": value})
            assert answer.status_code == 200, value
        two = httpx.Headers([("Authorization", "Bearer tok-a"), ("Authorization", "Bearer tok-a")])
        two.update(ACCEPT)
        answer = await http.post("/mcp", json=INITIALIZE, headers=two)
        assert answer.status_code == 401 and "more than one" in answer.json()["message"]
        for value in ("Basic tok-a", "Bearer tok-b", "Bearertok-a", "tok-a"):
            answer = await http.post("/mcp", json=INITIALIZE, headers={**ACCEPT, "Authorization": value})
            assert answer.status_code == 401, value
    assert inner.reached == 3


def test_a_token_file_may_list_one_token_per_client(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# clients\nalpha\n\n beta \nalpha\n")
    assert read_tokens(str(path), {}) == ["alpha", "beta"]
    assert read_tokens(None, {"LENS_MCP_TOKEN": "solo"}) == ["solo"]
    assert read_tokens(None, {}) == []
    path.write_text("# nothing here\n")
    with pytest.raises(TokenError, match="no token"):
        read_tokens(str(path), {})


# ---- sessions --------------------------------------------------------------------------------------------
def guarded_sessions(per_owner: int = 3, idle: float = 300.0, clock: object = time.monotonic) -> tuple:
    inner = FakeEndpoint()
    sessions = SessionGuard(inner, per_owner=per_owner, idle_timeout=idle, clock=clock)
    return inner, RequestGuard(sessions, allowed_for("127.0.0.1", 8123), ["tok-a", "tok-b"]), sessions


def auth(token: str, sid: str | None = None) -> dict[str, str]:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    if sid:
        headers["Mcp-Session-Id"] = sid
    return headers


async def test_a_session_belongs_to_the_token_that_opened_it() -> None:
    inner, app, _ = guarded_sessions()
    async with client_for(app) as http:
        sid = (await http.post("/mcp", json=INITIALIZE, headers=auth("tok-a"))).headers["mcp-session-id"]
        stolen = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "ping", "id": 2}, headers=auth("tok-b", sid))
        assert stolen.status_code == 404
        deleted = await http.delete("/mcp", headers=auth("tok-b", sid))
        assert deleted.status_code == 404 and sid in inner.open
        own = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "ping", "id": 2}, headers=auth("tok-a", sid))
        assert own.status_code == 200
        assert (await http.delete("/mcp", headers=auth("tok-a", sid))).status_code == 200
        assert sid not in inner.open


async def test_sessions_are_bounded_per_token_and_per_client_and_expire_when_idle() -> None:
    now = [1000.0]
    inner, app, sessions = guarded_sessions(per_owner=3, idle=60.0, clock=lambda: now[0])
    async with client_for(app) as http:
        opened = [await http.post("/mcp", json=INITIALIZE, headers=auth("tok-a")) for _ in range(3)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        refused = await http.post("/mcp", json=INITIALIZE, headers=auth("tok-a"))
        assert (
            refused.status_code == 429 and "too many open sessions for this token" in refused.json()["error"]["message"]
        )
        # another token from another address is not locked out
        async with client_for(app, "127.0.0.9") as other:
            assert (await other.post("/mcp", json=INITIALIZE, headers=auth("tok-b"))).status_code == 200
        # per client address: the same address with another token is bounded too
        for _ in range(2):
            assert (await http.post("/mcp", json=INITIALIZE, headers=auth("tok-b"))).status_code == 429
        # ending one frees a place
        sid = opened[0].headers["mcp-session-id"]
        assert (await http.delete("/mcp", headers=auth("tok-a", sid))).status_code == 200
        assert (await http.post("/mcp", json=INITIALIZE, headers=auth("tok-a"))).status_code == 200
        # idle sessions are forgotten after the timeout
        now[0] += 61
        assert (await http.post("/mcp", json=INITIALIZE, headers=auth("tok-a"))).status_code == 200
    assert len(sessions.sessions) == 1


# ---- real servers ------------------------------------------------------------------------------------------
def _free_port(address: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tokenless_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Token-less HTTP servers bound to 127.0.0.1, 127.0.0.2 and localhost, started side by side."""
    env = {key: value for key, value in os.environ.items() if key != "LENS_MCP_TOKEN"}
    logs = tmp_path_factory.mktemp("rebinding")
    ports: dict[str, int] = {}
    processes = []
    for bound in ("127.0.0.1", "127.0.0.2", "localhost"):
        ports[bound] = _free_port("127.0.0.2" if bound == "127.0.0.2" else "127.0.0.1")
        command = [sys.executable, "-m", "lens_mcp", "serve", "--transport", "http", "--host", bound]
        command += ["--port", str(ports[bound]), "--model", "toy-induction", "--device", "cpu"]
        with open(logs / f"{bound}.log", "w") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for bound, process in zip(ports, processes, strict=True):
            address = "127.0.0.2" if bound == "127.0.0.2" else "127.0.0.1"
            deadline = time.monotonic() + 90
            while True:
                if process.poll() is not None:
                    pytest.fail(f"server on {bound} exited:\n{(logs / f'{bound}.log').read_text()}")
                try:
                    httpx.get(f"http://{address}:{ports[bound]}/", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"server on {bound} did not start")
                    time.sleep(0.3)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.subprocess
@pytest.mark.parametrize("bound", ["127.0.0.1", "127.0.0.2", "localhost"])
def test_real_tokenless_servers_refuse_dns_rebinding(tokenless_servers: dict[str, int], bound: str) -> None:
    port = tokenless_servers[bound]
    url = f"http://{'127.0.0.2' if bound == '127.0.0.2' else '127.0.0.1'}:{port}/mcp"
    forged = httpx.post(url, json=INITIALIZE, headers={**ACCEPT, "Host": "evil.example"}, timeout=10)
    assert forged.status_code == 421
    forged = httpx.post(
        url, json=INITIALIZE, headers={**ACCEPT, "Host": f"evil.example:{port}", "Origin": "http://evil.example"}
    )
    assert forged.status_code == 421
    origin = httpx.post(
        url, json=INITIALIZE, headers={**ACCEPT, "Host": f"{bound}:{port}", "Origin": "http://evil.example"}, timeout=10
    )
    assert origin.status_code == 403
    good = httpx.post(url, json=INITIALIZE, headers={**ACCEPT, "Host": f"{bound}:{port}"}, timeout=30)
    assert good.status_code == 200 and good.headers.get("mcp-session-id")


@pytest.fixture(scope="module")
def two_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("two-tokens")
    (folder / "tokens").write_text("# one per client\nalpha-token\nbeta-token\n")
    port = _free_port("127.0.0.1")
    command = [sys.executable, "-m", "lens_mcp", "serve", "--transport", "http", "--port", str(port)]
    command += ["--token-file", str(folder / "tokens"), "--sessions-per-client", "2", "--model", "toy-induction"]
    env = {key: value for key, value in os.environ.items() if key != "LENS_MCP_TOKEN"}
    with open(folder / "log", "w") as log:
        process = subprocess.Popen([*command, "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail((folder / "log").read_text())
            try:
                if httpx.post(url, json={}, timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not start")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.subprocess
def test_a_real_server_binds_sessions_to_tokens_and_bounds_them(two_token_server: str) -> None:
    url = two_token_server
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

    def post(token: str, body: dict, sid: str | None = None) -> httpx.Response:
        return httpx.post(url, json=body, headers=auth(token, sid), timeout=30)

    opened = post("alpha-token", INITIALIZE)
    assert opened.status_code == 200
    sid = opened.headers["mcp-session-id"]
    assert post("beta-token", ping, sid).status_code == 404
    assert httpx.delete(url, headers=auth("beta-token", sid), timeout=30).status_code == 404
    assert post("alpha-token", ping, sid).status_code == 200  # untouched by the other token
    assert post("alpha-token", INITIALIZE).status_code == 200
    refused = post("alpha-token", INITIALIZE)
    assert refused.status_code == 429 and "too many open sessions" in refused.json()["error"]["message"]
    assert httpx.delete(url, headers=auth("alpha-token", sid), timeout=30).status_code == 200
    assert post("alpha-token", INITIALIZE).status_code == 200
