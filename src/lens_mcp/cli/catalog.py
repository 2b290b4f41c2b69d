"""`lens-mcp prompts | prompt NAME key=value | resources | resource URI`: the server's MCP prompts and resources
from a shell, through the same in-process MCP client session as `call` (lens_mcp.cli.scripted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from lens_mcp.cli.scripted import compact, one_line, session
from lens_mcp.errors import UsageError
from lens_mcp.model_host import ModelHost

MODEL_RESOURCES = ("lens://model/",)  # resources that need the loaded model: reading one starts the load


async def list_prompts(host: ModelHost, out: TextIO) -> int:
    async with session(host) as (client, _):
        prompts = (await client.list_prompts()).prompts
    width = max((len(p.name) for p in prompts), default=0)
    for prompt in prompts:
        arguments = [a.name if a.required else f"[{a.name}]" for a in prompt.arguments or []]
        out.write(f"{prompt.name.ljust(width)}  {one_line(prompt.description)}  args: {' '.join(arguments) or '-'}\n")
    out.flush()
    return 0


def _prompt_arguments(pairs: list[str]) -> dict[str, str]:
    arguments: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"argument {pair!r} is not key=value (e.g. prompt='The Eiffel Tower is in the city of')")
        if key.strip() in arguments:
            raise UsageError(f"argument {key.strip()!r} is given twice")
        arguments[key.strip()] = value  # prompt arguments are strings in MCP
    return arguments


async def get_prompt(host: ModelHost, name: str, pairs: list[str], out: TextIO) -> int:
    arguments = _prompt_arguments(pairs)
    async with session(host) as (client, _):
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        if name not in prompts:
            raise UsageError(f"unknown prompt {name!r}; the prompts are: {', '.join(prompts)} (`lens-mcp prompts`)")
        declared = {a.name: a for a in prompts[name].arguments or []}
        unknown = sorted(set(arguments) - set(declared))
        if unknown:
            raise UsageError(f"{name} has no argument {', '.join(map(repr, unknown))}; it takes: {', '.join(declared)}")
        missing = [a for a, spec in declared.items() if spec.required and a not in arguments]
        if missing:
            raise UsageError(f"{name} needs {', '.join(missing)} (e.g. {missing[0]}='...')")
        rendered = await client.get_prompt(name, arguments)
    for message in rendered.messages:
        content: Any = message.content
        out.write((getattr(content, "text", None) or compact(content.model_dump(mode="json"))) + "\n")
    out.flush()
    return 0


async def list_resources(host: ModelHost, out: TextIO) -> int:
    async with session(host) as (client, _):
        resources = (await client.list_resources()).resources
    width = max((len(str(r.uri)) for r in resources), default=0)
    for resource in resources:
        out.write(f"{str(resource.uri).ljust(width)}  {one_line(resource.description)}\n")
    out.flush()
    return 0


async def read_resource(host: ModelHost, start_load: Callable[[], None], uri: str, out: TextIO) -> int:
    async with session(host) as (client, _):
        known = [str(r.uri) for r in (await client.list_resources()).resources]
        if uri not in known:
            raise UsageError(f"unknown resource {uri!r}; the resources are: {', '.join(known)} (`lens-mcp resources`)")
        if uri.startswith(MODEL_RESOURCES):
            start_load()
        result = await client.read_resource(uri)
    for content in result.contents:
        out.write((getattr(content, "text", None) or compact(content.model_dump(mode="json"))) + "\n")
    out.flush()
    return 0
