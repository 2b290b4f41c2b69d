"""`lens-mcp replay RECORD.jsonl`: re-run every call of a record on a freshly loaded model and compare.

Each call goes through a real MCP client session, as `call` does (same validation, same results). A result
matches its recorded one when every field is equal, numbers within rounding: results carry 4 significant
digits, and two numbers match when they differ by at most one unit in the 4th significant digit of the larger
(plus --atol). Timing and machine facts (seconds, load_seconds, from_cache, device, forward_passes) are not
compared. The weights fingerprint of the replaying model is compared with the recorded one. `image` arguments
are dropped (pictures are not results); load_model calls are re-run on replay's --device.

`lens-mcp report` lives beside it (lens_mcp.cli.report): both read records.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeGuard

from lens_mcp.errors import LensError, UsageError
from lens_mcp.server.record import RecordFile, fingerprint, read_record, read_records

IGNORED_KEYS = frozenset({"seconds", "load_seconds", "throughput", "from_cache", "device", "forward_passes"})
SIGNIFICANT_DIGITS = 4
MAX_SHOWN = 5


def numbers_match(a: float, b: float, atol: float = 0.0) -> bool:
    """Equal within one unit in the last (4th significant) digit of the larger magnitude, plus atol."""
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    scale = max(abs(a), abs(b))
    ulp = 10 ** (math.floor(math.log10(scale)) - (SIGNIFICANT_DIGITS - 1))
    return abs(a - b) <= ulp * (1 + 1e-9) + atol


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def differences(recorded: Any, replayed: Any, path: str = "", atol: float = 0.0) -> list[str]:
    """Where two JSON values differ, as 'path: recorded X, now Y' lines (all of them)."""
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        found = []
        for key in list(recorded) + [k for k in replayed if k not in recorded]:
            if key in IGNORED_KEYS:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in replayed:
                found.append(f"{where}: recorded, missing now")
            elif key not in recorded:
                found.append(f"{where}: not recorded, now {_show(replayed[key])}")
            else:
                found += differences(recorded[key], replayed[key], where, atol)
        return found
    if isinstance(recorded, list) and isinstance(replayed, list):
        if len(recorded) != len(replayed):
            return [f"{path}: recorded {len(recorded)} items, now {len(replayed)}"]
        found = []
        for index, (a, b) in enumerate(zip(recorded, replayed, strict=True)):
            found += differences(a, b, f"{path}[{index}]", atol)
        return found
    if _is_number(recorded) and _is_number(replayed):
        if numbers_match(float(recorded), float(replayed), atol):
            return []
    elif recorded == replayed:
        return []
    return [f"{path or 'result'}: recorded {_show(recorded)}, now {_show(replayed)}"]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_model(record: RecordFile) -> tuple[str | None, str | None, bool]:
    """(spec, dtype, whether the first call is itself a load_model) of the model the record starts with."""
    for entry in record.entries:
        model = entry.get("model")
        if isinstance(model, dict) and model.get("spec"):
            return model["spec"], model.get("dtype"), entry.get("tool") == "load_model"
    return None, None, False


def _loads(record: RecordFile, spec: str) -> list[str]:
    """What replaying the record loads: its model, then every load_model and load_sae call's spec."""
    loads = [f"model {spec}"]
    for entry in record.entries:
        arguments = entry.get("arguments") if isinstance(entry.get("arguments"), dict) else {}
        assert isinstance(arguments, dict)
        if entry.get("tool") == "load_model" and isinstance(arguments.get("model"), str):
            loads.append(f"load_model {arguments['model']}")
        elif entry.get("tool") == "load_sae" and isinstance(arguments.get("spec"), str):
            loads.append(f"load_sae {arguments['spec']}")
    return list(dict.fromkeys(loads))


async def replay(record: RecordFile, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import anyio.to_thread

    from lens_mcp.cli.hosts import make_host
    from lens_mcp.cli.scripted import result_data, result_text, session

    host = make_host(args, shared=True)
    spec, dtype, starts_with_load = _first_model(record)
    from_record = args.model is None
    spec = args.model or spec
    dtype = args.dtype or dtype
    if spec is None:
        raise _usage("the record names no model; pass --model")
    err.write(f"lens-mcp replay: this record loads: {', '.join(_loads(record, spec))}\n")
    err.write(f"lens-mcp replay: allowed here: {host.load_policy.describe()} (--load-root, --allow-hub)\n")
    err.flush()
    if not (starts_with_load and from_record):
        err.write(f"lens-mcp replay: loading {spec}\n")
        err.flush()
        try:  # the record's own model is a client's request; --model is the operator's
            await anyio.to_thread.run_sync(lambda: host.load(spec, args.device, dtype, confine=from_record))
        except LensError as exc:
            raise _usage(str(exc)) from None

    differing: list[dict[str, Any]] = []
    fingerprints: dict[str, set[str]] = {}  # recorded fingerprint -> fingerprints seen on replay
    same = 0
    async with session(host) as (client, _tools):
        for entry in record.entries:
            tool = str(entry.get("tool"))
            arguments = dict(entry.get("arguments") or {}) if isinstance(entry.get("arguments"), dict) else {}
            arguments.pop("image", None)
            if tool == "load_model":
                arguments["device"] = args.device
                if args.dtype is not None:
                    arguments["dtype"] = args.dtype
            result = await client.call_tool(tool, arguments)
            if result.is_error:
                now: dict[str, Any] = {"ok": False, "error": result_text(result)}
            else:
                now = {"ok": True, "result": result_data(result)}
            before: dict[str, Any] = {"ok": bool(entry.get("ok"))}
            before.update({"result": entry.get("result")} if entry.get("ok") else {"error": entry.get("error")})
            found = differences(before, now, atol=args.atol)
            recorded_model = entry.get("model") if isinstance(entry.get("model"), dict) else None
            if recorded_model and recorded_model.get("fingerprint") and host.model is not None:
                here = await anyio.to_thread.run_sync(lambda: fingerprint(host.model))  # type: ignore[arg-type]
                fingerprints.setdefault(recorded_model["fingerprint"], set()).add(here)
            if found:
                differing.append({"line": entry.get("line"), "n": entry.get("n"), "tool": tool, "differences": found})
                if not args.as_json:
                    shown = "; ".join(found[:MAX_SHOWN]) + (
                        f"; ... {len(found) - MAX_SHOWN} more" if len(found) > MAX_SHOWN else ""
                    )
                    out.write(f"line {entry.get('line')} {tool}: DIFFERS: {shown}\n")
            else:
                same += 1
            out.flush()

    weights_match = bool(fingerprints) and all(seen == {recorded} for recorded, seen in fingerprints.items())
    summary = {
        "record": str(record.path),
        "calls": len(record.entries),
        "same": same,
        "differ": len(differing),
        "skipped_lines": record.skipped,
        "weights_fingerprint": {
            "match": weights_match,
            "recorded": sorted(fingerprints),
            "replayed": sorted({fp for seen in fingerprints.values() for fp in seen}),
        },
    }
    if args.as_json:
        out.write(json.dumps({**summary, "differing": differing}, ensure_ascii=False) + "\n")
    else:
        for skipped in record.skipped:
            out.write(f"skipped {skipped}\n")
        if not fingerprints:
            weights = "not compared (the record holds no fingerprint)"
        elif weights_match:
            weights = f"matches ({', '.join(sorted(fingerprints))})"
        else:
            pairs = [f"recorded {r}, here {', '.join(sorted(s))}" for r, s in fingerprints.items() if s != {r}]
            weights = "DIFFERS: " + "; ".join(pairs)
        out.write(
            f"replayed {len(record.entries)} calls of {record.path}: {same} same, {len(differing)} differ; "
            f"weights fingerprint {weights}\n"
        )
    out.flush()
    return 0 if not differing and (weights_match or not fingerprints) else 1


def _usage(message: str) -> Exception:
    return UsageError(message)


def add_record_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_model_arguments: Callable[[argparse.ArgumentParser], None],
    log_levels: Sequence[str],
) -> None:
    report = commands.add_parser(
        "report",
        help="write a self-contained HTML page of a record (every call, key numbers, heatmaps, errors)",
    )
    report.add_argument(
        "records",
        nargs="+",
        metavar="record",
        help="record files written with --record DIR (.jsonl), or folders of them: merged in time order",
    )
    report.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default report.html)")
    report.add_argument("--log-level", default="WARNING", choices=list(log_levels))

    replay_parser = commands.add_parser(
        "replay",
        help="re-run every call of a record on a loaded model and report the results that differ",
        description="Re-run a record's calls (on --model, by default the record's own model) and compare each "
        "result with the recorded one within rounding (1 unit in the 4th significant digit). Exit status 0 when "
        "every call matches and the weights fingerprint matches, 1 otherwise, 2 on bad input.",
    )
    replay_parser.add_argument("record", help="a record file written with --record DIR (a .jsonl)")
    add_model_arguments(replay_parser)
    replay_parser.set_defaults(model=None, dtype=None)
    replay_parser.add_argument(
        "--atol", type=float, default=0.0, help="absolute tolerance added to the rounding tolerance (default 0)"
    )
    replay_parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON summary line")
    replay_parser.add_argument("--log-level", default="WARNING", choices=list(log_levels))


def run_record_command(args: argparse.Namespace, out: TextIO) -> int:
    """report / replay; exit status 2 for an unreadable record."""
    names = args.records if args.command == "report" else [args.record]
    try:
        record = read_records(names) if args.command == "report" else read_record(args.record)
    except OSError as exc:
        where = exc.filename or " ".join(names)
        print(f"lens-mcp {args.command}: error: cannot read {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not record.entries:
        print(f"lens-mcp {args.command}: error: {' '.join(names)} holds no call records", file=sys.stderr)
        return 2
    if args.command == "report":
        from lens_mcp.cli.report import write_report

        try:
            path = write_report(record, args.output)
        except OSError as exc:
            print(f"lens-mcp report: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        files = f" from {len(record.sources)} records" if len(record.sources) > 1 else ""
        print(f"lens-mcp report: wrote {path} ({len(record.entries)} calls{files})", file=sys.stderr)
        return 0
    import anyio

    try:
        return anyio.run(replay, record, args, out, sys.stderr)
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, UsageError):
            print(f"lens-mcp replay: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, LensError):
            print(f"lens-mcp replay: error: {exc}", file=sys.stderr)
            return 1
        raise
