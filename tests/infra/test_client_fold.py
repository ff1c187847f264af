"""The browser library folds user names exactly as the server does, for every code point (client/fold.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata

import pytest

from mapping.keys import normalize_user_name
from testkit.azurite import ROOT

GENERATOR = ROOT / "client" / "scripts" / "casefold.py"


def server_fold(name: str) -> str:
    """Fold a name as mapping.keys.user_key does, before escaping."""
    return unicodedata.normalize("NFC", normalize_user_name(name).casefold())


def test_the_folding_data_is_generated_from_this_python() -> None:
    """client/casefold.js is what client/scripts/casefold.py writes with the Python the app runs on."""
    checked = subprocess.run([sys.executable, str(GENERATOR), "--check"], check=False)
    assert checked.returncode == 0, "client/casefold.js is stale: run `make casefold`"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is needed to run the library")
def test_every_code_point_folds_as_on_the_server() -> None:
    """For every code point c, the library's fold of "#c#" equals the server's."""
    script = ROOT / "client" / "scripts" / "fold-all.mjs"
    node = shutil.which("node") or "node"
    output = subprocess.run([node, str(script)], check=True, capture_output=True, text=True, timeout=120).stdout
    library = {int(point): folded for point, folded in json.loads(output).items()}
    server = {}
    for point in range(sys.maxunicode + 1):
        if 0xD800 <= point <= 0xDFFF:
            continue
        name = f"#{chr(point)}#"
        if (folded := server_fold(name)) != name:
            server[point] = folded
    differing = {hex(p): (library.get(p), server.get(p)) for p in library.keys() | server.keys()}
    differing = {p: pair for p, pair in differing.items() if pair[0] != pair[1]}
    assert not differing, f"{len(differing)} code points fold differently, e.g. {list(differing.items())[:5]}"
    assert len(server) > 1000  # the comparison covered the folding characters
