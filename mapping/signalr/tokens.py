"""Access tokens for Azure SignalR Service: HS256 JWTs signed with an access key (the one signer of the project)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

TOKEN_LIFETIME_SECONDS = 3600


def access_key_token(
    access_key: str,
    *,
    audience: str,
    lifetime_seconds: int = TOKEN_LIFETIME_SECONDS,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """Return an HS256 JWT: `aud` the audience (a REST URL without its query, or a client URL), `exp` soon after now."""
    header = _b64(_compact({"alg": "HS256", "typ": "JWT"}))
    body = _b64(_compact({"aud": audience, "exp": int(time.time()) + lifetime_seconds, **(claims or {})}))
    signing_input = f"{header}.{body}"
    signature = hmac.new(access_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
