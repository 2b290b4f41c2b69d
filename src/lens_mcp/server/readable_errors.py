"""Server middleware for the errors the SDK reports, or fails to report, before any tool runs.

Arguments that fail the input schema: the pydantic report (type codes, documentation links) becomes one line
per argument naming it, the value received, what it should be and its description. Unknown argument names
(which the SDK would silently ignore, so `toplk=3` would run with the default top_k) are refused with the
tool's argument list. An unknown tool name: the message lists the tools.
"""

from __future__ import annotations

import inspect
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, TypeAdapter, ValidationError, create_model

log = logging.getLogger(__name__)

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

    def unknown_arguments(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """The refusal for argument names tool `name` does not take, or None when all are known."""
        known = [p.name for p in self._parameters.get(name, [])]
        unknown = [key for key in arguments if key not in known]
        if name not in self._parameters or not unknown:
            return None
        shown = ", ".join(repr(str(key)[:40]) for key in unknown[:5])
        accepted = ", ".join(known) if known else "none (call it with no arguments)"
        return (
            f"Error executing tool {name}: unknown argument{'s' if len(unknown) > 1 else ''} {shown}. "
            f"{name} takes: {accepted}. Remove or rename {'them' if len(unknown) > 1 else 'it'} "
            "(tools/list gives each argument's schema)."
        )

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        if getattr(ctx, "method", None) == "tools/call":
            params = ctx.params or {}
            arguments = params.get("arguments") if isinstance(params, Mapping) else None
            name = params.get("name") if isinstance(params, Mapping) else None
            if isinstance(arguments, Mapping) and isinstance(name, str):
                refusal = self.unknown_arguments(name, arguments)
                if refusal is not None:
                    return CallToolResult(content=[TextContent(type="text", text=refusal)], is_error=True)
        result = await call_next(ctx)
        if getattr(ctx, "method", None) == "tools/call":
            try:
                return self._rewrite(ctx.params or {}, result)
            except Exception:
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
