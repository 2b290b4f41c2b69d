"""The `lens-mcp` command. `serve` runs the MCP server; stdout carries nothing but the protocol."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lens_mcp import __version__
from lens_mcp.limits import Limits
from lens_mcp.loading import DEFAULT_MODEL

LIMIT_FLAGS = {
    "max_prompt_tokens": "tokens per prompt",
    "max_sweep_cells": "patched cells per patch_sweep",
    "max_batch_sequences": "sequences per forward batch",
    "max_batch_tokens": "tokens per forward batch",
    "max_induction_tokens": "tokens in one induction_scores call",
    "max_top_k": "largest top_k",
    "max_response_chars": "characters of JSON per tool result",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"builtin (smollm2-135m, toy-induction), HF name, save_pretrained folder or .gguf file "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks cuda, then cpu (mps only when named)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device-map", default=None,
                        help="HF device map (e.g. auto, balanced) for models larger than one GPU")
    parser.add_argument("--n-devices", type=int, default=None, help="split the model across this many GPUs")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model repositories' own code to run (off by default)")
    limits = parser.add_argument_group("limits (also settable as LENS_MCP_<NAME> environment variables)")
    for name, what in LIMIT_FLAGS.items():
        limits.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lens-mcp", description="MCP server for mechanistic interpretability.")
    parser.add_argument("--version", action="version", version=f"lens-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP server (stdio by default)")
    add_model_arguments(serve)
    serve.add_argument("--transport", default="stdio", choices=["stdio", "http"])
    serve.add_argument("--host", default="127.0.0.1", help="http: address to bind")
    serve.add_argument("--port", type=int, default=8000, help="http: port")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits.from_env(**{name: getattr(args, name) for name in LIMIT_FLAGS})


def serve(args: argparse.Namespace) -> int:
    from lens_mcp.model_host import ModelHost
    from lens_mcp.server.app import StartupModel, build_server

    host = ModelHost(limits_from_args(args), trust_remote_code=args.trust_remote_code,
                     device_map=args.device_map, n_devices=args.n_devices)
    server = build_server(host, StartupModel(args.model, args.device, args.dtype))
    if args.transport == "stdio":
        server.run("stdio")
        return 0
    from lens_mcp.server.http import serve_http

    return serve_http(server, args.host, args.port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(args, "log_level", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return serve(args)
    except ValueError as exc:  # bad limit values and the like
        parser.error(str(exc))
    parser.error(f"unknown command {args.command}")
    return 2
