"""Run the emulator: `python -m local.emulator --port 8888 --upstream http://localhost:7071/runtime/webhooks/signalr`."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from local import serving
from local.emulator.server import EmulatorConfig, create_app

# Development keys, published in the README and local.settings.sample.json; not secrets.
DEFAULT_ACCESS_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
DEFAULT_SECONDARY_KEY = "HGFEDCBA9876543210ZYXWVUTSRQPONMLKJIHGFEDCBA"
DEFAULT_UPSTREAM = "http://localhost:7071/runtime/webhooks/signalr"


def connection_string(public_url: str, access_key: str) -> str:
    """Return the connection string for `AzureSignalRConnectionString`, in the service's documented format."""
    parts = urlsplit(public_url)
    port = f"Port={parts.port};" if parts.port else ""
    return f"Endpoint={parts.scheme}://{parts.hostname};{port}AccessKey={access_key};Version=1.0;"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line; each option also has an environment variable."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m local.emulator", description=__doc__)
    parser.add_argument("--host", default=env("SIGNALR_EMULATOR_HOST", "localhost"), help="interface to listen on")
    parser.add_argument("--port", type=int, default=int(env("SIGNALR_EMULATOR_PORT", "8888")))
    parser.add_argument(
        "--public-url",
        default=env("SIGNALR_EMULATOR_PUBLIC_URL"),
        help="URL clients use (default http://localhost:PORT)",
    )
    parser.add_argument("--upstream", default=env("SIGNALR_EMULATOR_UPSTREAM", DEFAULT_UPSTREAM), help="upstream URL")
    parser.add_argument("--access-key", default=env("SIGNALR_EMULATOR_ACCESS_KEY", DEFAULT_ACCESS_KEY))
    parser.add_argument("--secondary-key", default=env("SIGNALR_EMULATOR_SECONDARY_KEY", DEFAULT_SECONDARY_KEY))
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=float(env("SIGNALR_EMULATOR_CLIENT_TIMEOUT", "30")),
        help="seconds without any message from a client before it counts as gone",
    )
    parser.add_argument(
        "--keepalive", type=float, default=float(env("SIGNALR_EMULATOR_KEEPALIVE", "15")), help="ping interval"
    )
    parser.add_argument("--upstream-timeout", type=float, default=20.0, help="seconds to wait for the app")
    parser.add_argument(
        "--refuse-failed-connected",
        action="store_true",
        default=env("SIGNALR_EMULATOR_REFUSE_FAILED_CONNECTED", "").lower() in {"1", "true", "yes"},
        help="call connected before answering the handshake and refuse the client when it fails (the default, as "
        "Microsoft's emulator: answer the handshake, then call connected and only log its failure)",
    )
    parser.add_argument("--log-level", default=env("SIGNALR_EMULATOR_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGINT or SIGTERM."""
    public_url = (args.public_url or f"http://localhost:{args.port}").rstrip("/")
    config = EmulatorConfig(
        public_url=public_url,
        keys=[args.access_key, args.secondary_key],
        upstream_url=args.upstream,
        client_timeout=args.client_timeout,
        keepalive_interval=args.keepalive,
        upstream_timeout=args.upstream_timeout,
        refuse_failed_connected=args.refuse_failed_connected,
    )
    banner = (
        f"SignalR emulator: {public_url} (upstream {args.upstream})\n"
        f"  AzureSignalRConnectionString={connection_string(public_url, args.access_key)}"
    )
    await serving.serve_until_stopped(create_app(config), args.host, args.port, banner=banner, access_log=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    return serving.run(serve(args), component="emulator", log_level=args.log_level, quiet_logger="aiohttp.access")


if __name__ == "__main__":
    sys.exit(main())
