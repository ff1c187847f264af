"""Run the function app locally: `python -m local.host --port 7071` (HTTP, SignalR, timer and queue triggers)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from local import serving
from local.host import settings
from local.host.functions import load_functions
from local.host.queues import QueueOptions
from local.host.server import SIGNALR_WEBHOOK, create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m local.host", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("LOCAL_HOST_HOST", "localhost"), help="interface to listen on")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_HOST_PORT", "7071")))
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the func.FunctionApp")
    parser.add_argument("--settings", type=Path, default=Path("local.settings.json"), help="local.settings.json path")
    parser.add_argument("--host-json", type=Path, default=Path("host.json"))
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="an app setting that wins over the file"
    )
    parser.add_argument(
        "--static", action="append", default=[], metavar="URL_PREFIX=DIR", help="also serve a directory (local only)"
    )
    parser.add_argument(
        "--function-key",
        action="append",
        default=[],
        metavar="KEY",
        help="check keys as Azure does: a route that is not anonymous needs ?code=KEY or x-functions-key (repeatable)",
    )
    parser.add_argument(
        "--system-key",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="a host system key, as in Azure: signalr_extension=KEY makes /runtime/webhooks/signalr need ?code=KEY"
        " (needed when the SignalR connection is identity-based: then no signature is checked)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOCAL_HOST_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def _host_json(path: Path) -> dict[str, Any]:
    """Read host.json (an absent or unreadable file counts as empty)."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _route_prefix(host_json: dict[str, Any]) -> str:
    prefix = host_json.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return str(prefix)


def _load_app(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), attribute or "app")


async def serve(args: argparse.Namespace) -> None:
    """Load the settings and the app, then serve until SIGINT or SIGTERM."""
    overrides = settings.parse_name_value_pairs(args.setting, "--setting")
    settings.apply({**settings.load_local_settings(args.settings), **overrides})
    directories = settings.parse_name_value_pairs(args.static, "--static")
    static = {prefix: Path(directory) for prefix, directory in directories.items()}
    host_json = _host_json(args.host_json)
    try:
        queue_options = QueueOptions.from_host_json(host_json)
    except settings.SettingsError as error:
        raise SystemExit(f"{args.host_json}: {error}") from None
    try:
        specs = load_functions(_load_app(args.app))
    except Exception as error:  # as the Functions host does, an app that fails to index serves nothing
        raise SystemExit(f"Worker failed to index functions: {type(error).__name__}: {error}") from None
    system_keys = settings.parse_name_value_pairs(args.system_key, "--system-key")
    prefix = _route_prefix(host_json)
    app = create_app(
        specs,
        route_prefix=prefix,
        static=static,
        queue_options=queue_options,
        function_keys=args.function_key,
        system_keys=system_keys,
    )
    base = f"http://{'localhost' if args.host in ('', '0.0.0.0', '::') else args.host}:{args.port}"  # noqa: S104
    keys = "function keys checked" if args.function_key else "function keys not checked"
    banner = f"Local host: {base}/{prefix.strip('/')}/ (SignalR upstream {base}{SIGNALR_WEBHOOK}; {keys})"
    try:
        await serving.serve_until_stopped(app, args.host, args.port, banner=banner, access_log=False)
    finally:
        await _close_app_clients()


async def _close_app_clients() -> None:
    """Close what the app keeps open for the process (its table client), as a host shutting down would."""
    runtime = sys.modules.get("mapping.functions.runtime")  # loaded only if the app uses the mapping library
    reset = getattr(runtime, "reset", None)
    if reset is not None:
        await reset()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    return serving.run(serve(args), component="host", log_level=args.log_level, quiet_logger="azure")


if __name__ == "__main__":
    sys.exit(main())
