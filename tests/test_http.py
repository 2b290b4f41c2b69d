"""`lens-mcp serve --transport http`: a real server subprocess, real HTTP client sessions, bearer tokens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from lens_mcp.server.http import TokenError, check_exposure, is_loopback, read_token
from tests.mcp_client import result_data

TOKEN = "test-token-3f9c1d"
START_TIMEOUT_S = 90

pytestmark = pytest.mark.subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "lens_mcp", "serve", "--transport", "http", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("http") / "server.log"
    env = {**os.environ, "LENS_MCP_TOKEN": TOKEN}
    with open(log, "w") as log_file:
        command = serve_command("--host", "127.0.0.1", "--port", str(port), "--model", "toy-induction")
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # ready once it answers HTTP at all (here: 401, as the probe carries no token)
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.post(url, json={}, timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in {START_TIMEOUT_S}s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_authorized_session_calls_tokenize(server_url: str, mode: str) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=120))
    async with (
        http,
        Client(streamable_http_client(server_url, http_client=http), mode=mode, read_timeout_seconds=120) as client,
    ):
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"model_info", "tokenize", "load_model"} <= names
        data = result_data(await client.call_tool("tokenize", {"text": "w3 w4"}))
        assert [pair[1] for pair in data["tokens"][1:]] == ["w3", "w4"]
        info = json.loads((await client.read_resource("lens://model/info")).contents[0].text)
        assert info["name"] == "toy-induction" and info["n_layers"] == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_requests_without_the_token_get_401(server_url: str, headers: dict[str, str]) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
    }
    response = httpx.post(
        server_url, json=initialize, timeout=10, headers={"Accept": "application/json, text/event-stream", **headers}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(server_url.removesuffix("/mcp") + "/anything", headers=headers, timeout=10).status_code == 401


async def test_an_mcp_session_without_the_token_is_refused(server_url: str) -> None:
    refused: BaseException | None = None
    with anyio.move_on_after(30) as timer:
        try:
            async with Client(server_url, mode="legacy") as client:
                await client.list_tools()
        except Exception as exc:  # the SDK reports the 401 as a generic "Server returned an error response"
            refused = exc
    assert not timer.cancelled_caught, "the client hung instead of being refused"
    assert refused is not None, "a session without the token was accepted"


def test_a_non_loopback_host_without_a_token_refuses_to_start() -> None:
    env = {key: value for key, value in os.environ.items() if key != "LENS_MCP_TOKEN"}
    started = time.monotonic()
    done = subprocess.run(
        serve_command("--host", "0.0.0.0", "--port", str(free_port()), "--model", "toy-induction"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "LENS_MCP_TOKEN" in done.stderr and "--token-file" in done.stderr
    assert done.stdout == ""
    assert time.monotonic() - started < 60  # refused before any model load


def test_token_sources_and_loopback_rules(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    assert read_token(str(token_file), {"LENS_MCP_TOKEN": "from-env"}) == "from-file"
    assert read_token(None, {"LENS_MCP_TOKEN": " from-env "}) == "from-env"
    assert read_token(None, {}) is None
    for bad_file in (tmp_path / "missing", tmp_path / "empty"):
        if bad_file.name == "empty":
            bad_file.write_text("\n")
        with pytest.raises(TokenError, match="--token-file"):
            read_token(str(bad_file), {})
    with pytest.raises(TokenError, match="empty"):
        read_token(None, {"LENS_MCP_TOKEN": " "})
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "gpu-box.example.org"))
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", "token")
    with pytest.raises(TokenError, match="LENS_MCP_TOKEN"):
        check_exposure("0.0.0.0", None)


def _cli(*args: str, token: str | None = TOKEN, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LENS_MCP_TOKEN"}
    if token is not None:
        env["LENS_MCP_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "lens_mcp", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_call_and_batch_connect_to_the_running_server_instead_of_loading(server_url: str) -> None:
    """`--connect` sends the calls to the server's model (toy-induction), though this command's own default model
    is smollm2-135m: nothing loads here, so each command costs a session, not a model load."""
    info = _cli("call", "--connect", server_url, "model_info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["name"] == "toy-induction"
    here = _cli("call", "--model", "toy-induction", "tokenize", "text= w5 w6", token=None)
    there = _cli("call", "--connect", server_url, "tokenize", "text= w5 w6")
    assert there.returncode == 0 and json.loads(there.stdout) == json.loads(here.stdout)
    lines = '{"tool": "tokenize", "arguments": {"text": "w1"}, "id": "a"}\n{"tool": "nope"}\n'
    batch = _cli("batch", "--connect", server_url, "-", stdin=lines)
    records = [json.loads(line) for line in batch.stdout.splitlines()]
    assert batch.returncode == 1 and [r["ok"] for r in records] == [True, False]
    assert records[0]["id"] == "a" and records[0]["result"]["n_tokens"] == 2
    assert "unknown tool 'nope'" in records[1]["error"]


def test_connect_says_what_is_wrong(server_url: str) -> None:
    wrong = _cli("call", "--connect", server_url, "model_info", token="not-the-token")
    assert wrong.returncode == 2 and "bearer token" in wrong.stderr and "Traceback" not in wrong.stderr
    nobody = _cli("call", "--connect", f"http://127.0.0.1:{free_port()}/mcp", "model_info")
    assert nobody.returncode == 2 and "Is `lens-mcp serve --transport http` running" in nobody.stderr
    recorded = _cli("call", "--connect", server_url, "--record", "/tmp", "model_info")
    assert recorded.returncode == 2 and "the server records its own calls" in recorded.stderr
    not_url = _cli("call", "--connect", "localhost:8000", "model_info")
    assert not_url.returncode == 2 and "is not an http(s) URL" in not_url.stderr
