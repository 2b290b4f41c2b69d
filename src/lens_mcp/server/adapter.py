"""Exposes plain tool functions as MCP tools.

A tool function is `fn(tc: ToolContext, **arguments) -> ResultModel`. `add_model_tool` publishes its
arguments (with their pydantic Field descriptions) as the input schema and the result model as the
output schema, runs it with the model held exclusively, turns `LensError` into `ToolError`, forwards
progress, honours cancellation between batches, and returns compact JSON under the response cap.
Each tool's parameters are registered with the server's `ReadableErrors` middleware (server/readable_errors.py),
which refuses unknown argument names and turns the SDK's schema errors into messages naming the argument and the fix.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from collections.abc import Callable
from typing import Annotated, Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost, beating
from lens_mcp.progress import ProgressReporter
from lens_mcp.server import images
from lens_mcp.server.finite import check_finite
from lens_mcp.server.readable_errors import readable_errors
from lens_mcp.tools.core.batching import is_out_of_memory
from lens_mcp.tools.core.context import ToolContext

log = logging.getLogger(__name__)


def progress_reporter(ctx: Context) -> ProgressReporter:
    """A reporter for a sync tool running on an anyio worker thread; raises if the call was cancelled."""

    def report(done: float, total: float | None = None, message: str | None = None) -> None:
        anyio.from_thread.check_cancelled()  # cancellation is a BaseException: it passes the handler below
        try:
            anyio.from_thread.run(ctx.report_progress, float(done), None if total is None else float(total), message)
        except Exception:  # a client that went away must not fail the computation
            log.debug("progress notification failed", exc_info=True)

    return report


def compact_result(result: BaseModel, limits: Limits) -> CallToolResult:
    """Structured content plus the same JSON as compact text, refused when over the response cap."""
    data = result.model_dump(mode="json")
    check_finite(data)  # JSON has no NaN/Inf: name where one appears instead of failing to serialize
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text) > limits.max_response_chars:
        raise LensError(
            f"the result is {len(text)} characters of JSON, over the response cap of {limits.max_response_chars} "
            "(LENS_MCP_MAX_RESPONSE_CHARS). Narrow the call: fewer layers=/positions=/query_positions=, "
            "or a smaller top_k."
        )
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def run_guarded(tool_name: str, call: Callable[[], BaseModel], limits: Limits) -> CallToolResult:
    """Run a tool body; every failure becomes a ToolError the agent can read. Cancellation is a
    BaseException and passes through untouched."""
    try:
        return compact_result(call(), limits)
    except LensError as exc:
        raise ToolError(str(exc)) from exc
    except MemoryError as exc:
        raise ToolError(
            f"{tool_name} ran out of memory; narrow the call (fewer layers/positions, shorter "
            "prompts, smaller n_seqs) and try again. The loaded model is unchanged."
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError" or is_out_of_memory(exc):  # also allocator RuntimeErrors
            raise ToolError(
                f"{tool_name} ran out of GPU memory; narrow the call and try again. The loaded model is unchanged."
            ) from exc
        log.exception("tool %s failed unexpectedly", tool_name)
        raise ToolError(
            f"{tool_name} failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]}). The loaded "
            "model is unchanged; check the arguments against model_info and tokenize."
        ) from exc


def _exposed_signature(fn: Callable[..., Any], skip: int) -> tuple[list[inspect.Parameter], Any]:
    hints = typing.get_type_hints(fn, include_extras=True)
    parameters = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.replace(annotation=hints[p.name]) for p in parameters], hints["return"]


def _publish(
    server: MCPServer,
    fn: Callable[..., Any],
    body: Callable[..., CallToolResult],
    skip: int,
    annotations: ToolAnnotations,
    title: str | None,
    extra: tuple[inspect.Parameter, ...] = (),
) -> None:
    parameters, result_model = _exposed_signature(fn, skip)
    parameters += extra  # adapter-level arguments (image)
    context_parameter = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    returns = Annotated[CallToolResult, result_model]
    body.__signature__ = inspect.Signature([*parameters, context_parameter], return_annotation=returns)
    body.__annotations__ = {**{p.name: p.annotation for p in parameters}, "ctx": Context, "return": returns}
    body.__name__ = fn.__name__
    body.__doc__ = fn.__doc__
    server.add_tool(body, name=fn.__name__, title=title, description=inspect.getdoc(fn), annotations=annotations)
    readable_errors(server).register(fn.__name__, parameters)


def add_model_tool(
    server: MCPServer,
    host: ModelHost,
    fn: Callable[..., BaseModel],
    *,
    title: str | None = None,
    read_only: bool = True,
    open_world: bool = False,
) -> None:
    """Register `fn(tc, **arguments)` as a tool that runs on the loaded model. A tool that changes what is
    attached to the model (read_only=False) is idempotent and not destructive; open_world: it may load from
    outside the server (folders, the Hub)."""

    draws = images.supports_images(_exposed_signature(fn, 1)[1])

    def body(ctx: Context, **arguments: Any) -> CallToolResult:
        report = progress_reporter(ctx)
        image = bool(arguments.pop(images.IMAGE_ARGUMENT, False))
        produced: list[BaseModel] = []

        def call() -> BaseModel:
            with host.use(report) as model, beating(model, report) as heartbeat:
                produced.append(fn(ToolContext(model, host.limits, heartbeat, host.load_policy), **arguments))
            return produced[-1]

        result = run_guarded(fn.__name__, call, host.limits)
        return images.with_images(result, produced[-1], fn.__name__) if image else result

    _publish(
        server,
        fn,
        body,
        skip=1,
        annotations=ToolAnnotations(read_only_hint=read_only, idempotent_hint=read_only, open_world_hint=open_world)
        if not open_world
        else ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True),
        title=title,
        extra=(images.IMAGE_PARAMETER,) if draws else (),
    )


def add_host_tool(
    server: MCPServer,
    host: ModelHost,
    fn: Callable[..., BaseModel],
    *,
    title: str | None = None,
    read_only: bool = False,
    open_world: bool = True,
) -> None:
    """Register `fn(host, report, **arguments)`: a tool that manages the host itself (e.g. load_model)."""

    def body(ctx: Context, **arguments: Any) -> CallToolResult:
        report = progress_reporter(ctx)
        return run_guarded(fn.__name__, lambda: fn(host, report, **arguments), host.limits)

    _publish(
        server,
        fn,
        body,
        skip=2,
        annotations=ToolAnnotations(
            read_only_hint=read_only, destructive_hint=False, idempotent_hint=True, open_world_hint=open_world
        ),
        title=title,
    )
