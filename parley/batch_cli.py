"""``parley batch ...``: submit, watch and fetch Message Batches of a running server.

Talks HTTP to a parley (or any Messages API) server: ``--base-url`` or
``ANTHROPIC_BASE_URL`` (default ``http://127.0.0.1:8000``), ``--api-key`` or
``ANTHROPIC_API_KEY``. The input file is JSONL, one ``{"custom_id", "params"}``
a line, as the batch API takes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx

BASE = "/v1/messages/batches"


def _connection(parser: argparse.ArgumentParser, default: Any) -> None:
    """--base-url and --api-key, on ``batch`` and on each verb (before or after it)."""
    parser.add_argument(
        "--base-url",
        default=default,
        metavar="URL",
        help="the server (default: http://127.0.0.1:8000; env: ANTHROPIC_BASE_URL)",
    )
    parser.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="the API key (default: none; env: ANTHROPIC_API_KEY)",
    )


def add_parser(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="submit and inspect Message Batches of a running server",
        description="Submit, watch and fetch Message Batches of a running parley (or any "
        'Messages API server). The input file is JSONL: one {"custom_id", "params"} '
        "a line, as the batch API takes them.",
    )
    _connection(batch, None)
    verbs = batch.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, help=help, description=help)
        # SUPPRESS: given here it is set, else the value given before the verb stays.
        _connection(parser, argparse.SUPPRESS)
        return parser

    submit = verb("submit", "create a batch from a JSONL file")
    submit.add_argument("file", type=Path, metavar="FILE", help="the requests, JSONL")
    submit.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    submit.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="with --wait: write the results to FILE (default: the ended batch on stdout)",
    )
    verb("status", "one batch's status and counts").add_argument("id", metavar="BATCH_ID")
    results = verb("results", "an ended batch's results as JSONL")
    results.add_argument("id", metavar="BATCH_ID")
    results.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to FILE (default: stdout)"
    )
    verb("list", "your batches, newest first")
    verb("cancel", "cancel a batch").add_argument("id", metavar="BATCH_ID")
    verb("delete", "delete an ended batch and its results").add_argument("id", metavar="BATCH_ID")


class CliError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    base = args.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("ANTHROPIC_API_KEY") or ""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    try:
        with httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=600) as client:
            return _verb(client, args)
    except CliError as exc:
        print(f"parley batch: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"parley batch: cannot reach {base}: {exc}", file=sys.stderr)
        return 1


def _verb(client: httpx.Client, args: argparse.Namespace) -> int:
    if args.verb == "submit":
        if args.output is not None and not args.wait:
            raise CliError("-o/--output needs --wait (or use 'parley batch results ID -o FILE')")
        batch = _submit(client, args.file)
        if args.wait:
            batch = _wait(client, batch)
        if args.output is not None:
            _results(client, batch["id"], args.output)
            counts = ", ".join(f"{v} {k}" for k, v in batch["request_counts"].items() if v)
            print(f"{batch['id']}: {counts}; results in {args.output}", file=sys.stderr)
        else:
            _print(batch)
    elif args.verb == "status":
        _print(_call(client, "GET", f"{BASE}/{args.id}"))
    elif args.verb == "cancel":
        _print(_call(client, "POST", f"{BASE}/{args.id}/cancel"))
    elif args.verb == "delete":
        _call(client, "DELETE", f"{BASE}/{args.id}")
        print(f"deleted {args.id}")
    elif args.verb == "list":
        _list(client)
    elif args.verb == "results":
        _results(client, args.id, args.output)
    return 0


_ROW = "{:<34}  {:<11}  {:>9}  {}"


def _list(client: httpx.Client) -> None:
    after: str | None = None
    shown = 0
    while True:
        query: dict[str, Any] = {"limit": 100}
        if after:
            query["after_id"] = after
        page = _call(client, "GET", BASE, params=query)
        for batch in page["data"]:
            if not shown:
                print(_ROW.format("ID", "STATUS", "DONE", "CREATED"))
            counts = batch["request_counts"]
            done = sum(v for k, v in counts.items() if k != "processing")
            total = f"{done}/{done + counts['processing']}"
            print(_ROW.format(batch["id"], batch["processing_status"], total, batch["created_at"]))
            shown += 1
        if not page["has_more"]:
            break
        after = page["last_id"]
    if not shown:
        print("no batches yet (create one with 'parley batch submit FILE')")


def _call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    response = client.request(method, url, **kwargs)
    if response.status_code >= 400:
        _call_failed(response)
    return response.json()


def _submit(client: httpx.Client, path: Path) -> Any:
    requests = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    requests.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CliError(f"{path}:{number}: not JSON: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    return _call(client, "POST", BASE, json={"requests": requests})


def _wait(client: httpx.Client, batch: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    total = sum(batch["request_counts"].values())
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task(batch["id"], total=total)
        while batch["processing_status"] != "ended":
            time.sleep(1.0)
            batch = _call(client, "GET", f"{BASE}/{batch['id']}")
            progress.update(task, completed=total - batch["request_counts"]["processing"])
        progress.update(task, completed=total)
    return batch


def _results(client: httpx.Client, batch_id: str, output: Path | None) -> None:
    sink = output.open("wb") if output else sys.stdout.buffer
    try:
        with client.stream("GET", f"{BASE}/{batch_id}/results") as response:
            if response.status_code >= 400:
                response.read()
                _call_failed(response)
            for chunk in response.iter_bytes():
                sink.write(chunk)
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


def _call_failed(response: httpx.Response) -> NoReturn:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    raise CliError(f"{response.status_code}: {message}")


def _print(batch: Any) -> None:
    print(json.dumps(batch, indent=2))
