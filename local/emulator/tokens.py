"""Access tokens as Azure SignalR Service checks them: HS256 JWTs signed with an access key, `aud` and `exp` set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jwt

# Claims that describe the token itself; every other claim is the user's and travels upstream.
RESERVED_CLAIMS = frozenset({"aud", "exp", "iat", "nbf", "iss", "jti", "asrs.s.aut", "asrs.s.ut"})
NAME_ID_CLAIMS = ("nameid", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier")


class TokenError(Exception):
    """The access token is missing, malformed, expired, wrongly signed or meant for another audience."""


def verify(token: str | None, keys: Iterable[str], *, audiences: Iterable[str]) -> dict[str, Any]:
    """Return the token's claims if one of `keys` signed it, it has not expired and its `aud` is one of `audiences`."""
    if not token:
        raise TokenError("no access token")
    wanted = {_normalise(audience) for audience in audiences}
    last_error: Exception | None = None
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.encode(),
                algorithms=["HS256"],
                options={"require": ["exp", "aud"], "verify_aud": False},
                leeway=5,
            )
        except jwt.InvalidSignatureError as error:
            last_error = error
            continue
        except jwt.PyJWTError as error:
            raise TokenError(f"invalid access token: {error}") from None
        audience = claims.get("aud")
        candidates = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(a, str) and _normalise(a) in wanted for a in candidates):
            raise TokenError(f"the token's audience {audience!r} is not this endpoint")
        return claims
    raise TokenError(f"invalid access token: {last_error or 'no key'}")


def user_id(claims: Mapping[str, Any]) -> str | None:
    """Return the user id a token carries (`nameid`), or None."""
    for name in NAME_ID_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def user_claims(claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return the user's claims (everything but the token's own), as (type, value) pairs."""
    pairs: list[tuple[str, str]] = []
    for name, value in claims.items():
        if name in RESERVED_CLAIMS:
            continue
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name, str(item)))
    return pairs


def _normalise(audience: str) -> str:
    return audience.rstrip("/").casefold()
