"""Exposes plain tool functions as MCP tools.

A tool function is `fn(tc: ToolContext, **arguments) -> ResultModel`. `add_model_tool` publishes its
arguments (with their pydantic Field descriptions) as the input schema and the result model as the
output schema, runs it with the model held exclusively, turns `LensError` into `ToolError`, forwards
progress, honours cancellation between batches, and returns compact JSON under the response cap.
`ReadableErrors` (server middleware) rewrites the SDK's reports of arguments that fail the input schema, and of
unknown tool names, into messages that name the argument and the fix.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, TypeAdapter, ValidationError, create_model

from lens_mcp.errors import LensError
from lens_mcp.limits import Limits
from lens_mcp.model_host import ModelHost
from lens_mcp.progress import ProgressReporter
from lens_mcp.server.finite import check_finite
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


# ---- readable messages for arguments that fail the input schema ------------------------------------
_JSON_KINDS = {
    "integer": ("an integer", "integers"),
    "number": ("a number", "numbers"),
    "string": ("a string", "strings"),
    "boolean": ("true or false", "booleans"),
    "null": ("null", "nulls"),
    "object": ("an object", "objects"),
}


def _expected(schema: Mapping[str, Any], plural: bool = False) -> str:
    """What a JSON schema accepts, in words: 'an integer', 'a list of integers or null', "one of 'a', 'b'"."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(dict.fromkeys(_expected(option, plural) for option in options))
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        noun = "lists" if plural else "a list"
        return f"{noun} of {_expected(items, plural=True)}" if isinstance(items, Mapping) and items else noun
    singular, plural_form = _JSON_KINDS.get(kind if isinstance(kind, str) else "", ("a value", "values"))
    return plural_form if plural else singular


def _location(loc: tuple[Any, ...]) -> str:
    """('heads', 0, 1) -> 'heads[0][1]'; union branch labels such as 'list[int]' are dropped."""
    text = str(loc[0])
    for part in loc[1:]:
        if isinstance(part, int):
            text += f"[{part}]"
    return text


class ReadableErrors:
    """Server middleware for two errors the SDK reports before any tool runs. Arguments that fail the input
    schema: the pydantic report (type codes, documentation links) becomes one line per argument naming it, the
    value received, what it should be and its description. An unknown tool name: the message lists the tools.
    What is accepted does not change: an argument report is rewritten only when the SDK already refused the
    call and this checker refuses it too."""

    def __init__(self) -> None:
        self._parameters: dict[str, list[inspect.Parameter]] = {}
        self._checkers: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {}

    def register(self, name: str, parameters: list[inspect.Parameter]) -> None:
        self._parameters[name] = parameters

    def _checker(self, name: str) -> tuple[type[BaseModel], dict[str, Any]]:
        """The argument model and per-argument JSON schemas of a tool, built on its first bad call."""
        if name not in self._checkers:
            parameters = self._parameters[name]
            fields: dict[str, Any] = {
                p.name: (p.annotation, ... if p.default is inspect.Parameter.empty else p.default) for p in parameters
            }
            self._checkers[name] = (
                create_model(f"{name}_arguments", **fields),
                {p.name: TypeAdapter(p.annotation).json_schema() for p in parameters},
            )
        return self._checkers[name]

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        result = await call_next(ctx)
        if getattr(ctx, "method", None) == "tools/call":
            try:
                return self._rewrite(ctx.params or {}, result)
            except Exception:  # noqa: BLE001 - never lose the original answer over a message
                log.debug("could not rewrite an argument error", exc_info=True)
        return result

    def _rewrite(self, params: Mapping[str, Any], result: Any) -> Any:
        """`result` is the handler's answer: a CallToolResult, or its wire form (a dict with isError)."""
        name = params.get("name")
        if isinstance(result, CallToolResult):
            is_error, content = result.is_error, [block.model_dump(by_alias=True) for block in result.content]
        elif isinstance(result, Mapping):
            is_error, content = result.get("isError"), result.get("content") or []
        else:
            return result
        text = content[0].get("text", "") if content and isinstance(content[0], Mapping) else ""
        if not is_error or not isinstance(text, str):
            return result
        message = None
        if text == f"Unknown tool: {name}" and self._parameters:
            message = (
                f"Unknown tool: {str(name)[:80]!r}. Use one of: {', '.join(self._parameters)} "
                "(tools/list describes them)."
            )
        elif (
            name in self._parameters
            and text.startswith(f"Error executing tool {name}: ")
            and "validation error" in text
        ):
            message = self.describe(name, dict(params.get("arguments") or {}))
        if message is None:
            return result
        if isinstance(result, CallToolResult):
            return result.model_copy(update={"content": [TextContent(type="text", text=message)]})
        return {**result, "content": [{"type": "text", "text": message}]}

    def describe(self, name: str, arguments: dict[str, Any]) -> str | None:
        """The readable message for `arguments` of tool `name`, or None when they validate."""
        model, schemas = self._checker(name)
        for key, value in list(arguments.items()):  # the SDK parses JSON text given for non-string arguments
            field = model.model_fields.get(key)
            if isinstance(value, str) and field is not None and field.annotation is not str:
                try:
                    parsed = json.loads(value)
                except (ValueError, RecursionError):
                    continue
                if isinstance(parsed, (list, dict)):
                    arguments[key] = parsed
        try:
            model.model_validate(arguments)
        except ValidationError as exc:
            problems: dict[str, list[str]] = {}
            values: dict[str, Any] = {}
            for error in exc.errors(include_url=False):
                loc = tuple(error.get("loc") or ("arguments",))
                where = _location(loc)
                values.setdefault(where, error.get("input"))
                reason = "missing" if error.get("type") == "missing" else str(error.get("msg", "invalid"))
                problems.setdefault(where, [])
                if reason not in problems[where]:
                    problems[where].append(reason)
            lines = []
            for where, reasons in problems.items():
                arg = where.split("[", 1)[0]
                schema = schemas.get(arg, {})
                wanted = _expected(schema)
                about = schema.get("description")
                about_text = f" ({about})" if about else ""
                if reasons == ["missing"]:
                    lines.append(f"{arg} is required but missing: pass {arg} as {wanted}{about_text}.")
                else:
                    shown = json.dumps(values[where], ensure_ascii=True, default=repr)
                    shown = shown if len(shown) <= 80 else shown[:77] + "..."
                    lines.append(
                        f"{where}={shown} is invalid ({'; '.join(reasons)}): pass {arg} as {wanted}{about_text}."
                    )
            return f"Error executing tool {name}: invalid arguments.\n" + "\n".join(f"- {line}" for line in lines)
        return None


_READABLE_ERRORS: weakref.WeakKeyDictionary[MCPServer, ReadableErrors] = weakref.WeakKeyDictionary()


def readable_errors(server: MCPServer) -> ReadableErrors:
    """The server's ReadableErrors middleware, installed on first use."""
    middleware = _READABLE_ERRORS.get(server)
    if middleware is None:
        middleware = _READABLE_ERRORS[server] = ReadableErrors()
        server.middleware.append(middleware)
    return middleware


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
) -> None:
    parameters, result_model = _exposed_signature(fn, skip)
    context_parameter = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)
    returns = Annotated[CallToolResult, result_model]
    body.__signature__ = inspect.Signature([*parameters, context_parameter], return_annotation=returns)  # type: ignore[attr-defined]
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
) -> None:
    """Register `fn(tc, **arguments)` as a tool that runs on the loaded model."""

    def body(ctx: Context, **arguments: Any) -> CallToolResult:
        report = progress_reporter(ctx)

        def call() -> BaseModel:
            with host.use(report) as model:
                return fn(ToolContext(model, host.limits, report), **arguments)

        return run_guarded(fn.__name__, call, host.limits)

    _publish(
        server,
        fn,
        body,
        skip=1,
        annotations=ToolAnnotations(read_only_hint=read_only, idempotent_hint=read_only, open_world_hint=False),
        title=title,
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
