"""The `lens-mcp` command.

  serve   run the MCP server: stdio (default; stdout carries nothing but the protocol) or streamable HTTP
  tools   list the tools, one line each (loads no model)
  call    run one tool through a real MCP client session; prints its compact JSON result
  batch   run a JSONL file of calls in one session (model loaded once); one JSON result line per call
  prompts / prompt NAME key=value     list the MCP prompts / print one rendered
  resources / resource URI            list the MCP resources / print one
  report RECORD.jsonl -o report.html  a self-contained HTML page of a record (--record DIR)
  replay RECORD.jsonl                 re-run a record's calls and compare the results

Exit status: 0 success, 1 a tool reported an error (message on stderr), 2 bad command-line input.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO, cast

from lens_mcp import __version__
from lens_mcp.cli.hosts import LIMIT_FLAGS, make_host
from lens_mcp.errors import UsageError
from lens_mcp.loading import DEFAULT_MODEL

if TYPE_CHECKING:
    from lens_mcp.cli.scripted import Server
    from lens_mcp.model_host import ModelHost

CATALOG_COMMANDS = ("prompts", "prompt", "resources", "resource")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"builtin (smollm2-135m, toy-induction), HF name, save_pretrained folder or .gguf file "
        f"(default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="auto picks cuda, then cpu (mps only when named)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--device-map", default=None, help="HF device map (e.g. auto, balanced) for models larger than one GPU"
    )
    parser.add_argument("--n-devices", type=int, default=None, help="split the model across this many GPUs")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model repositories' own code to run (off by default)"
    )
    parser.add_argument(
        "--load-root",
        action="append",
        default=None,
        metavar="DIR",
        help="load_model may load paths only under this folder (repeatable); over HTTP, paths are off without it",
    )
    parser.add_argument(
        "--allow-hub",
        action="store_true",
        help="http: let load_model fetch Hugging Face names (off by default over HTTP; always on otherwise)",
    )
    limits = parser.add_argument_group("limits (also settable as LENS_MCP_<NAME> environment variables)")
    for name, what in LIMIT_FLAGS.items():
        limits.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=what)


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def add_record_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record",
        default=None,
        metavar="DIR",
        help="append every tool call (arguments, result or error, seconds, weights fingerprint, versions) to a "
        "JSONL file in DIR, fsynced per call (default: $LENS_MCP_RECORD_DIR; off when neither is set)",
    )


def add_connect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        default=None,
        metavar="URL",
        help="send the calls to a running `lens-mcp serve --transport http` (e.g. http://127.0.0.1:8000/mcp) "
        "instead of loading a model here: its model loads once for every command (--model, the limits and "
        "--record are then the server's)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="with --connect: the server's bearer token (default: $LENS_MCP_TOKEN)",
    )


def add_image_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-dir", default=None, metavar="DIR", help="write the PNG images of image=true calls to DIR"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lens-mcp", description="MCP server for mechanistic interpretability.")
    parser.add_argument("--version", action="version", version=f"lens-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server (stdio by default)")
    add_model_arguments(serve)
    serve.add_argument("--transport", default="stdio", choices=["stdio", "http"])
    serve.add_argument(
        "--host", default="127.0.0.1", help="http: address to bind; anything but loopback requires a bearer token"
    )
    serve.add_argument("--port", type=int, default=8000, help="http: port (endpoint http://HOST:PORT/mcp)")
    serve.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="http: file holding the bearer token clients must send (default: the LENS_MCP_TOKEN environment variable)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="http: another Host name clients use to reach this server (a DNS name, an SSH tunnel's "
        "localhost:9000); repeatable. Requests naming any other host are refused (DNS rebinding)",
    )
    serve.add_argument(
        "--sessions-per-client",
        type=int,
        default=32,
        metavar="N",
        help="http: open sessions allowed per token and per client address (default 32)",
    )
    serve.add_argument(
        "--session-idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="http: close sessions idle this long (default 300)",
    )
    serve.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    add_record_argument(serve)

    tools = commands.add_parser("tools", help="list the tools with a one-line description each (loads no model)")
    tools.add_argument(
        "--json",
        action="store_true",
        dest="as_json",
        help="print names, descriptions and input schemas as one JSON array",
    )
    add_model_arguments(tools)
    tools.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)

    call = commands.add_parser(
        "call",
        help="run one tool and print its compact JSON result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one tool through a real MCP client session and print its result as compact JSON.\n"
        "Values are JSON when they parse (numbers, true/false, null, [0,1]) and text otherwise;\n"
        "arguments the tool declares as strings always keep the text. Exit status 1 on a tool\n"
        "error (the message on stderr), 2 on bad input. Examples:\n"
        "  lens-mcp call tokenize text=' Paris'\n"
        "  lens-mcp call logit_lens prompt='The Eiffel Tower is in the city of' top_k=3\n"
        '  lens-mcp call head_attribution --json \'{"prompt": "...", "answer": " Paris"}\'',
    )
    call.add_argument("tool", help="tool name (see `lens-mcp tools`)")
    call.add_argument("pairs", nargs="*", metavar="key=value", help="tool arguments")
    call.add_argument(
        "--json",
        dest="json_arguments",
        metavar="OBJECT",
        help="all arguments as one JSON object (key=value pairs override its keys)",
    )
    add_model_arguments(call)
    call.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)
    add_record_argument(call)
    add_image_argument(call)
    add_connect_arguments(call)
    call.add_argument(
        "--note",
        default=None,
        metavar="TEXT",
        help="a note kept with the call in the record; `lens-mcp report` shows it as the heading of this step "
        '(in a batch file: a "note" key on the line)',
    )

    batch = commands.add_parser(
        "batch",
        help="run a JSONL file of calls in one session, one JSON result line per call",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run many calls in one session (the model loads once).\n"
        'Input, one call per line: {"tool": "tokenize", "arguments": {"text": " Paris"}}\n'
        '  ("name"/"args" work too; an "id" is echoed back; blank lines are skipped).\n'
        "Output, one line per call in input order:\n"
        '  {"line": 1, "tool": "tokenize", "ok": true, "result": {...}}\n'
        '  {"line": 2, "tool": ..., "ok": false, "error": "..."}\n'
        "Exit status 0 when every call succeeded, 1 when any failed, 2 on bad input.",
    )
    batch.add_argument("file", help="JSONL file of calls ('-' for stdin)")
    batch.add_argument("-o", "--output", default="-", help="where to write the result lines (default: stdout)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_arguments(batch)
    batch.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)
    add_record_argument(batch)
    add_image_argument(batch)
    add_connect_arguments(batch)
    index = commands.add_parser(
        "index",
        help="build the exemplar index of an SAE's features or an MLP layer's neurons over a corpus",
        description="Build (or resume) the exemplar index feature_exemplars reads, running build_exemplar_index "
        "until it is complete; prints its last result as compact JSON. Examples:\n"
        "  lens-mcp index --corpus kjv-bible                 (the default model's builtin SAE)\n"
        "  lens-mcp index --layer 10 --corpus python-stdlib  (the neurons of MLP layer 10)\n"
        "  lens-mcp index --model gpt2 --sae ./my_sae --corpus notes.txt --tokens 200000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    index.add_argument("--sae", default=None, help="SAE to load first (builtin name, SAELens folder or Hub repo id)")
    index.add_argument("--sae-id", default=None, help="subfolder of a Hub repo holding the SAE")
    index.add_argument("--hook", default=None, help="hook of the SAE, when several are loaded")
    index.add_argument("--layer", type=int, default=None, help="index this MLP layer's neurons instead of an SAE")
    index.add_argument("--corpus", default=None, help="builtin (python-stdlib, kjv-bible), .txt/.jsonl, HF dataset id")
    index.add_argument("--tokens", type=int, default=None, help="corpus tokens to index (default 1,000,000)")
    index.add_argument("--context", type=int, default=None, help="tokens per context (default 64)")
    index.add_argument("--rebuild", action="store_true", help="start over (replaces an index for another model/SAE)")
    index.add_argument("--dry-run", action="store_true", help="print the cost of the first call only")
    add_model_arguments(index)
    index.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)
    add_catalog_commands(commands)
    from lens_mcp.cli.replay import add_record_commands

    add_record_commands(commands, add_model_arguments, LOG_LEVELS)
    return parser


def add_catalog_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prompts = commands.add_parser("prompts", help="list the MCP prompts (guided investigations) with their arguments")
    prompt = commands.add_parser(
        "prompt",
        help="print one MCP prompt's rendered plan",
        description="Print an MCP prompt rendered with your arguments, e.g.\n"
        "  lens-mcp prompt locate_fact prompt='The Eiffel Tower is in the city of' answer=' Paris'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prompt.add_argument("name", help="prompt name (see `lens-mcp prompts`)")
    prompt.add_argument("pairs", nargs="*", metavar="key=value", help="prompt arguments (strings)")
    resources = commands.add_parser("resources", help="list the MCP resources")
    resource = commands.add_parser("resource", help="print one MCP resource, e.g. lens://model/info")
    resource.add_argument("uri", help="resource URI (see `lens-mcp resources`)")
    for parser in (prompts, prompt, resources, resource):
        add_model_arguments(parser)
        parser.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)


def serve(args: argparse.Namespace) -> int:
    from lens_mcp.server.app import StartupModel, build_server

    token: list[str] = []
    if args.transport == "http":
        from lens_mcp.server.http import TokenError, check_exposure, read_tokens

        try:  # before the model starts loading: a misconfigured server should fail at once
            token = read_tokens(args.token_file)
            check_exposure(args.host, token)
        except TokenError as exc:
            print(f"lens-mcp: error: {exc}", file=sys.stderr)
            return 2
    host = make_host(args)
    from lens_mcp.server.record import start_recording

    start_recording(host, args.record, "serve", _say)
    server = build_server(host, StartupModel(args.model, args.device, args.dtype))
    if args.transport == "stdio":
        from lens_mcp.server.envelopes import serve_stdio

        serve_stdio(server)  # the SDK's stdio transport, with malformed requests answered instead of dropped
        return 0
    from lens_mcp.server.http import serve_http

    return serve_http(
        server,
        args.host,
        args.port,
        token=token,
        log_level=args.log_level,
        allowed_hosts=args.allowed_host,
        sessions_per_client=args.sessions_per_client,
        session_idle_timeout=args.session_idle_timeout,
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _loader(host: ModelHost, args: argparse.Namespace) -> Callable[[], None]:
    def start() -> None:
        if host.model is None and host.loading is None:
            host.load_in_background(args.model, args.device, args.dtype)

    return start


def scripted(args: argparse.Namespace, out: TextIO, exit_hard: bool = False) -> int:
    import anyio

    from lens_mcp.cli import scripted as commands

    if getattr(args, "connect", None) is not None:
        return _scripted_remote(args, out)
    host = make_host(args)
    if args.command in ("call", "batch"):
        from lens_mcp.server.record import start_recording

        start_recording(host, args.record, args.command, _say)
    if args.command == "tools":
        status = anyio.run(commands.list_tools, host, args.as_json, out)
    elif args.command == "index":
        arguments = {
            key: value
            for key, value in {
                "layer": args.layer,
                "hook": args.hook,
                "corpus": args.corpus,
                "tokens": args.tokens,
                "context": args.context,
                "rebuild": args.rebuild or None,
                "dry_run": args.dry_run or None,
            }.items()
            if value is not None
        }
        status = anyio.run(
            commands.build_index, host, _loader(host, args), args.sae, args.sae_id, arguments, out, sys.stderr
        )
    elif args.command == "call":
        status = _run_call(args, out, host, _loader(host, args))
    elif args.command in CATALOG_COMMANDS:
        from lens_mcp.cli import catalog

        if args.command == "prompts":
            status = anyio.run(catalog.list_prompts, host, out)
        elif args.command == "prompt":
            status = anyio.run(catalog.get_prompt, host, args.name, args.pairs, out)
        elif args.command == "resources":
            status = anyio.run(catalog.list_resources, host, out)
        else:
            status = anyio.run(catalog.read_resource, host, _loader(host, args), args.uri, out)
    else:
        status = _run_batch(args, out, host, _loader(host, args))
    if exit_hard and host.loading is not None:
        # The load is still running in its thread (the call failed before it needed the model): leave now
        # rather than let interpreter shutdown race the loader. Only as a program, never inside a caller.
        out.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run_call(args: argparse.Namespace, out: TextIO, server: Server, start_load: Callable[[], None]) -> int:
    import anyio

    from lens_mcp.cli import scripted as commands

    return anyio.run(
        commands.call_one,
        server,
        start_load,
        args.tool,
        args.pairs,
        args.json_arguments,
        out,
        sys.stderr,
        args.image_dir,
        args.note,
    )


def _run_batch(args: argparse.Namespace, out: TextIO, server: Server, start_load: Callable[[], None]) -> int:
    import anyio

    from lens_mcp.cli import scripted as commands
    from lens_mcp.cli.batch_io import GuardedOutput, batch_lines, close_output, refuse_overwriting_input

    refuse_overwriting_input(args.file, args.output)
    lines = batch_lines(args.file)
    with contextlib.ExitStack() as stack:
        target = out
        if args.output != "-":
            target = _open_output(args.output)
            stack.callback(close_output, target, args.output)
        target = cast(TextIO, GuardedOutput(target, args.output))  # forwards the rest of TextIO
        return anyio.run(
            commands.run_batch, server, start_load, lines, target, sys.stderr, not args.no_progress, args.image_dir
        )


def _scripted_remote(args: argparse.Namespace, out: TextIO) -> int:
    """`call` / `batch` against a running HTTP server: nothing loads here."""

    from lens_mcp.cli import scripted as commands
    from lens_mcp.server.http import TokenError, read_token

    if args.record is not None:
        raise UsageError("--record with --connect: the server records its own calls (start it with --record DIR)")
    if not args.connect.startswith(("http://", "https://")):
        raise UsageError(f"--connect {args.connect!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/mcp")
    try:
        remote = commands.Remote(args.connect, read_token(args.token_file))
    except TokenError as exc:
        raise UsageError(str(exc)) from exc
    if args.command == "call":
        return _run_call(args, out, remote, _no_load)
    return _run_batch(args, out, remote, _no_load)


def _no_load() -> None:
    """A running server has its model already."""


def _usage_error(exc: BaseException) -> Exception | None:
    """The UsageError inside `exc`, which task groups may have wrapped in exception groups."""

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, UsageError) else None


def _open_output(path: str) -> TextIO:

    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    out = sys.stdout  # results only; model loading redirects sys.stdout to stderr while it runs
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("call", "prompt"):  # key=value pairs may come after options: call tokenize --model X text=...
        args.pairs += [item for item in extra if not item.startswith("-")]
        extra = [item for item in extra if item.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(args, "log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            try:
                return serve(args)
            except UsageError as exc:
                print(f"lens-mcp serve: error: {exc}", file=sys.stderr)
                return 2
        if args.command in ("report", "replay"):
            from lens_mcp.cli.replay import run_record_command

            return run_record_command(args, out)
        if args.command in ("tools", "call", "batch", "index", *CATALOG_COMMANDS):
            try:
                return scripted(args, out, exit_hard=argv is None)
            except KeyboardInterrupt:
                print(f"lens-mcp {args.command}: interrupted", file=sys.stderr)
                return 130
            except BaseException as exc:
                usage = _usage_error(exc)
                if usage is None:
                    raise
                print(f"lens-mcp {args.command}: error: {usage}", file=sys.stderr)
                return 2
    except ValueError as exc:  # bad limit values and the like
        parser.error(str(exc))
    parser.error(f"unknown command {args.command}")
    return 2
