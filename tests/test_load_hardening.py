"""load_model: loads in the background (other calls keep the current model), a cancel abandons the load, loading
paths and hub names follow the server's policy, and a symlinked .gguf resolves to its target."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

import lens_mcp.model_host as model_host_module
from lens_mcp.loading.policy import LoadPolicy
from lens_mcp.loading.specs import BUILTIN_DIR, resolve_spec, smollm2_gguf_path
from lens_mcp.model_host import LoadCancelled, ModelHost
from lens_mcp.server.app import build_server
from tests.mcp_client import MODES, error_text, result_data

TOY_DIR = BUILTIN_DIR / "toy_induction"


class GatedLoader:
    """Stands in for loading.load_model: reports progress every 20 ms until released, then loads the real toy
    model. Records when it saw a cancellation."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.cancelled_at: float | None = None
        self.original = model_host_module.load_model

    def __call__(self, spec: Any, device: Any, dtype: Any, *, progress: Any, **kwargs: Any) -> Any:
        self.started.set()
        try:
            while not self.release.wait(0.02):
                progress(1, 3, "reading weights (gated)")
            progress(2, 3, "almost done")
        except LoadCancelled:
            self.cancelled_at = time.perf_counter()
            raise
        return self.original(spec, device, dtype, progress=progress, **kwargs)


@pytest.mark.parametrize("mode", MODES)
async def test_other_calls_use_the_current_model_while_a_load_runs(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    host = ModelHost()
    host.load("toy-induction", device="cpu")
    first = host.model
    loader = GatedLoader()
    monkeypatch.setattr(model_host_module, "load_model", loader)
    async with Client(build_server(host), mode=mode) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                loaded: dict[str, Any] = {}

                async def load() -> None:
                    loaded.update(result_data(await client.call_tool("load_model", {"model": str(TOY_DIR)})))

                group.start_soon(load)
                await anyio.to_thread.run_sync(loader.started.wait)
                asked = time.perf_counter()
                tokens = result_data(await client.call_tool("tokenize", {"text": "w1 w2"}))
                answered = time.perf_counter() - asked
                assert host.model is first, "the model was swapped before its load finished"
                loader.release.set()
            assert tokens["n_tokens"] == 3 and answered < 2.0, answered
            assert loaded["source"] == "local" and host.model is not first
            assert result_data(await client.call_tool("model_info", {}))["name"] == str(TOY_DIR)


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_load_stops_and_is_never_swapped_in(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    host = ModelHost()
    host.load("toy-induction", device="cpu")
    first = host.model
    loader = GatedLoader()
    monkeypatch.setattr(model_host_module, "load_model", loader)
    async with Client(build_server(host), mode=mode) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:

                async def load() -> None:
                    await client.call_tool("load_model", {"model": str(TOY_DIR)})

                group.start_soon(load)
                await anyio.to_thread.run_sync(loader.started.wait)
                await anyio.sleep(0.3)
                cancelled = time.perf_counter()
                group.cancel_scope.cancel()
            deadline = time.perf_counter() + 5
            while loader.cancelled_at is None and time.perf_counter() < deadline:
                await anyio.sleep(0.05)
            assert loader.cancelled_at is not None, "the load went on after the cancel"
            assert loader.cancelled_at - cancelled < 1.5
            loader.release.set()
            await anyio.sleep(0.3)
            assert host.model is first and host.loading is None
            assert result_data(await client.call_tool("tokenize", {"text": "w1"}))["n_tokens"] == 2


def test_a_load_abandoned_by_its_caller_does_not_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct use: when the caller's reporter raises (its request ended), the load stops and nothing is swapped."""
    host = ModelHost()
    host.load("toy-induction", device="cpu")
    first = host.model
    loader = GatedLoader()
    monkeypatch.setattr(model_host_module, "load_model", loader)

    def gone(*_: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        host.load(str(TOY_DIR), device="cpu", progress=gone)
    deadline = time.time() + 10
    while loader.cancelled_at is None and time.time() < deadline:
        time.sleep(0.02)
    assert loader.cancelled_at is not None, "the abandoned load went on"
    loader.release.set()
    while host.loading is not None and time.time() < deadline:
        time.sleep(0.02)
    assert host.model is first and host.loading is None


# ---- loading policy ------------------------------------------------------------------------------------
def test_http_policy_refuses_paths_and_hub_names_alike_whether_or_not_they_exist(tmp_path: Path) -> None:
    policy = LoadPolicy.for_transport("http")
    existing_file, missing_file = "/etc/hostname", str(tmp_path / "nothing.gguf")
    existing_dir, missing_dir = str(TOY_DIR), str(tmp_path / "no-folder")
    messages = []
    for text in (existing_file, missing_file, existing_dir, missing_dir, "gpt2", "EleutherAI/pythia-70m"):
        with pytest.raises(Exception, match="is not allowed") as caught:
            policy.resolve(text)
        messages.append(str(caught.value).replace(repr(text), "X"))
    assert len(set(messages)) == 1, messages  # nothing tells which paths exist
    assert "exist" not in messages[0] and "not a .gguf" not in messages[0]
    assert policy.resolve("toy-induction").source == "builtin"
    assert LoadPolicy.for_transport("http", allow_hub=True).resolve("EleutherAI/pythia-70m").source == "hub"


def test_load_roots_confine_paths_and_follow_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    shutil.copytree(TOY_DIR, root / "toy")
    shutil.copytree(TOY_DIR, outside / "toy")
    (root / "sneaky").symlink_to(outside / "toy")
    policy = LoadPolicy.for_transport("http", [str(root)])
    assert policy.resolve(str(root / "toy")).location == str((root / "toy").resolve())
    refusals = []
    for text in (str(outside / "toy"), str(root / "sneaky"), str(root / ".." / "elsewhere" / "toy"), "/etc/passwd"):
        with pytest.raises(Exception, match="is not allowed") as caught:
            policy.resolve(text)
        refusals.append(str(caught.value).replace(repr(text), "X"))
    assert len(set(refusals)) == 1
    with pytest.raises(Exception, match="no such file"):  # inside a root, the usual messages
        policy.resolve(str(root / "missing.gguf"))
    stdio = LoadPolicy.for_transport("stdio", [str(root)])
    with pytest.raises(Exception, match="is not allowed"):
        stdio.resolve(str(outside / "toy"))
    assert LoadPolicy.for_transport("stdio").resolve(str(outside / "toy")).source == "local"


@pytest.mark.parametrize("mode", MODES)
async def test_load_model_over_a_confined_server_says_only_not_allowed(mode: str) -> None:
    host = ModelHost(load_policy=LoadPolicy.for_transport("http"))
    host.load("toy-induction", device="cpu")
    async with Client(build_server(host), mode=mode) as client:
        texts = []
        for path in ("/etc/hostname", "/no/such/file.gguf", "/etc", "/no/such/folder"):
            texts.append(error_text(await client.call_tool("load_model", {"model": path})).replace(repr(path), "X"))
        assert len(set(texts)) == 1 and "not allowed" in texts[0] and "--load-root" in texts[0]
        assert result_data(await client.call_tool("model_info", {}))["name"] == "toy-induction"


def test_the_command_line_builds_the_policy() -> None:
    from lens_mcp.cli.hosts import make_host
    from lens_mcp.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--transport", "http", "--load-root", "/data", "--allow-hub"])
    policy = make_host(args).load_policy
    assert policy.roots == (Path("/data").resolve(),) and policy.hub and policy.paths
    http_default = make_host(build_parser().parse_args(["serve", "--transport", "http"])).load_policy
    assert not http_default.paths and not http_default.hub
    stdio_default = make_host(build_parser().parse_args(["serve"])).load_policy
    assert stdio_default.paths and stdio_default.hub and stdio_default.roots is None


# ---- symlinked .gguf ---------------------------------------------------------------------------------------
def test_a_gguf_reached_through_a_symlink_resolves_name_and_folder_from_the_target(tmp_path: Path) -> None:
    try:
        real = smollm2_gguf_path()
    except Exception:
        real = tmp_path / "blobs" / "model.gguf"
        real.parent.mkdir()
        real.write_bytes(b"GGUF")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    link = snapshot / "another-name.gguf"
    link.symlink_to(real)
    spec = resolve_spec(str(link))
    assert spec.source == "gguf"
    assert Path(spec.location) == real.resolve().parent and spec.gguf_file == real.resolve().name
    assert (Path(spec.location) / spec.gguf_file).is_file()
    blob = tmp_path / "blob-without-suffix"  # a Hugging Face blob: the name is a hash, the link says .gguf
    blob.write_bytes(b"GGUF")
    (snapshot / "m.gguf").symlink_to(blob)
    spec = resolve_spec(str(snapshot / "m.gguf"))
    assert (Path(spec.location) / spec.gguf_file) == blob.resolve()


@pytest.mark.slow
def test_the_default_gguf_loads_through_a_symlink_with_another_name(tmp_path: Path) -> None:
    link = tmp_path / "snapshot" / "SmolLM2.gguf"
    link.parent.mkdir()
    link.symlink_to(smollm2_gguf_path())
    host = ModelHost()
    loaded = host.load(str(link), device="cpu")
    assert loaded.cfg.n_layers == 30 and loaded.from_cache is not None


@pytest.mark.slow
def test_the_default_model_computes_in_the_dtype_it_reports() -> None:
    """A GGUF model loaded as bfloat16 runs in bfloat16 (the cache holds fp32; it used to stay fp32 while
    model_info said bfloat16)."""
    import torch

    loaded = ModelHost().load("smollm2-135m", device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert {parameter.dtype for parameter in loaded.bridge.parameters()} == {torch.bfloat16}


def test_a_relative_owner_name_says_the_same_whether_or_not_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Hub names allowed and paths confined, 'a/b' is read as a Hub id whether or not a folder a/b exists
    outside the roots: the answer must not tell a client what exists on the server's disk."""
    from lens_mcp.errors import LensError

    root = tmp_path / "root"
    (root / "inside" / "model").mkdir(parents=True)
    (root / "inside" / "model" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "secret" / "folder").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    policy = LoadPolicy(roots=(root.resolve(),), paths=True, hub=True)
    existing, missing = policy.resolve("secret/folder"), policy.resolve("nobody/nothing")
    assert existing.source == missing.source == "hub"
    monkeypatch.chdir(root)
    assert policy.resolve("inside/model").source != "hub"  # inside the roots, a relative folder is a folder
    closed = LoadPolicy(roots=(root.resolve(),), paths=True, hub=False)
    monkeypatch.chdir(tmp_path)
    messages = []
    for spec in ("secret/folder", "nobody/nothing"):
        with pytest.raises(LensError) as refused:
            closed.resolve(spec)
        messages.append(str(refused.value).replace(spec, "X"))
    assert messages[0] == messages[1]


def test_a_hub_id_shadowed_by_a_relative_folder_loads_from_the_hub_never_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_pretrained would read a relative folder named like the Hub id; the loader reads the Hub's snapshot."""
    from lens_mcp.loading import load as load_module
    from lens_mcp.loading.specs import ModelSpec

    secret = tmp_path / "secret" / "folder"
    secret.mkdir(parents=True)
    (secret / "config.json").write_text('{"model_type": "not-a-model"}', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    snapshot = resolve_spec("toy-induction").location  # stands in for the Hub's copy of "secret/folder"
    asked: list[str] = []
    monkeypatch.setattr(load_module, "in_local_cache", lambda repo_id: True)
    monkeypatch.setattr(load_module, "hub_snapshot", lambda repo_id: asked.append(repo_id) or snapshot)
    loaded = load_module.load_model(ModelSpec("secret/folder", "hub", "secret/folder"), device="cpu")
    assert asked == ["secret/folder"]
    toy_config = json.loads((Path(snapshot) / "config.json").read_text(encoding="utf-8"))
    assert loaded.cfg.n_layers == toy_config["n_layer"] and loaded.cfg.d_model == toy_config["n_embd"]


def test_an_sae_folder_inside_the_root_with_files_linked_outside_is_refused(tmp_path: Path) -> None:
    """load_sae checks every file it reads, not only the folder: cfg.json and the weights may be links."""
    from lens_mcp.errors import LensError
    from lens_mcp.loading.policy import LoadPolicy
    from lens_mcp.tools.features._sae import resolve_sae_folder
    from tests.sae_refs import toy_sae_folder

    root, outside = tmp_path / "root", tmp_path / "outside"
    real = toy_sae_folder(outside / "sae")
    linked = root / "linked"
    linked.mkdir(parents=True)
    for name in ("cfg.json", "sae_weights.safetensors"):
        (linked / name).symlink_to(real / name)
    own = toy_sae_folder(root / "own")
    policy = LoadPolicy(roots=(root.resolve(),), paths=True, hub=False)
    assert resolve_sae_folder(str(own), None, policy)[0] == own.resolve()
    with pytest.raises(LensError, match="not allowed"):
        resolve_sae_folder(str(linked), None, policy)
