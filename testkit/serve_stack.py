"""Run the whole local stack for tests in another language: Azurite, the SignalR emulator and the local host.

`python -m testkit.serve_stack [--setting NAME=VALUE ...]` starts them on free ports, prints one JSON line
(`{"host", "api", "emulator", "storage", "tablePort", "table", "hub"}`) and runs until its standard input closes
or it is terminated. The client library's Node tests start it this way.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from typing import Any

from local.host.settings import parse_name_value_pairs
from testkit.azurite import connection_string, running_azurite
from testkit.local_stack import running_local_stack


def _wait_for_the_end() -> None:
    """Return when standard input closes or SIGTERM/SIGINT arrives."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())

    def read_to_the_end() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=read_to_the_end, daemon=True).start()
    done.wait()


def main(argv: list[str] | None = None) -> None:
    """Start the stack, print where it listens, run until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m testkit.serve_stack", description=__doc__)
    parser.add_argument("--setting", action="append", default=[], help="an app setting, NAME=VALUE (repeatable)")
    parser.add_argument("--client-timeout", type=float, default=30.0, help="seconds a client may stay silent")
    parser.add_argument(
        "--app-table-port", type=int, help="the app reaches the table service on this port (a test's proxy to Azurite)"
    )
    args = parser.parse_args(argv)
    table = "Client" + uuid.uuid4().hex[:12]
    with running_azurite() as azurite:
        mapping_storage = azurite.connection_string
        if args.app_table_port:
            mapping_storage = connection_string(args.app_table_port)
        settings = {
            "AzureWebJobsStorage": azurite.connection_string,
            "MAPPING_STORAGE": mapping_storage,
            "MAPPING_TABLE": table,
            **parse_name_value_pairs(args.setting, "--setting"),
        }
        with running_local_stack(settings, client_timeout=args.client_timeout) as stack:
            ready: dict[str, Any] = {
                "host": stack.host_url,
                "api": f"{stack.host_url}/api",
                "emulator": stack.emulator_url,
                "storage": azurite.connection_string,
                "tablePort": azurite.port,
                "table": table,
                "hub": stack.hub,
            }
            print(json.dumps(ready), flush=True)
            _wait_for_the_end()


if __name__ == "__main__":
    main()
