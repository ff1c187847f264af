"""Who may call `/runtime/webhooks/signalr`: the host's system key, then the SignalR extension's signature check.

As deployed, two layers guard the webhook, and this module models both:

- **The Functions host** answers `/runtime/webhooks/{extension}` only with the extension's system key
  (`signalr_extension`, from `?code=` or the `x-functions-key` header, the header first): no key or a wrong one is 401,
  a valid key of another kind (a function or host key) is 403. (azure-functions-host, `HostController`'s
  `SystemKeyAuthLevel` policy, `DefaultScriptWebHookProvider.GetKeyName`, `AuthenticationLevelHandler`.)
- **The SignalR extension** checks `X-ASRS-Signature` only when the function's connection string holds an
  `AccessKey`: "once there is one connection string without access key, the validation is not required"
  (azure-sdk-for-net, `SignatureValidationOptionsSetup`). An identity-based connection (`<NAME>__serviceUri`, as the
  template deploys) has no key, so nothing but the host's `code=` protects the webhook.

Locally keys are not checked by default, as with Core Tools. The host checks the `signalr_extension` key when it is
given one (`--system-key signalr_extension=KEY`), and always when a SignalR trigger's connection is identity-based:
then the signature proves nothing, and without a key configured every upstream call is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from local.host import settings

SIGNALR_SYSTEM_KEY = "signalr_extension"  # the host's convention: "<extension>_extension", lower case
FUNCTION_KEY_HEADER = "x-functions-key"
KEY_QUERY = "code"
SIGNATURE_HEADER = "X-ASRS-Signature"


@dataclass(frozen=True, slots=True)
class UpstreamValidation:
    """How the SignalR extension validates upstream calls for one connection setting."""

    setting: str
    access_keys: tuple[str, ...]  # empty: identity-based, the signature is not checked

    @property
    def identity_based(self) -> bool:
        """Tell whether the connection has no access key (the extension then checks no signature)."""
        return not self.access_keys

    def signature_matches(self, connection_id: str, header: str | None) -> bool:
        """Check `X-ASRS-Signature` as the extension does: true for an identity-based connection; otherwise one of
        the comma-separated entries must equal `sha256=<hex HMAC-SHA256 of the connection id under an access key>`,
        compared ignoring case and not trimmed (`SignalRRequestResolver.ValidateSignature`)."""
        if self.identity_based:
            return True
        if not header:
            return False
        entries = [entry for entry in header.split(",") if entry]
        matched = False
        for key in self.access_keys:
            if not key:  # an empty AccessKey validates nothing
                continue
            expected = "sha256=" + hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()
            for entry in entries:
                # Constant time per entry; the extension's case-insensitive comparison.
                matched |= hmac.compare_digest(entry.lower().encode(), expected.encode())
        return matched


def access_key_of(connection_string: str) -> str | None:
    """Return the first `AccessKey` of a connection string (trimmed, possibly empty), or None when it has none:
    `SignatureValidationOptionsSetup.TryGetAccessKey` (split on `;`, then on the first `=`, name ignoring case)."""
    for prop in connection_string.split(";"):
        name, sep, value = prop.partition("=")
        if sep and name.strip().lower() == "accesskey":
            return value.strip()
    return None


def upstream_validation(setting_name: str) -> UpstreamValidation | None:
    """Read how upstream calls for the connection `setting_name` are validated, as the extension reads the setting:
    the connection string `NAME` (with or without an AccessKey) or, without one, the identity-based section
    `NAME__serviceUri`. None when neither is set (the connection is not configured)."""
    value = settings.setting(setting_name)
    if value is not None:
        key = access_key_of(value)
        return UpstreamValidation(setting_name, () if key is None else (key,))
    if settings.setting(f"{setting_name}__serviceUri") is not None:
        return UpstreamValidation(setting_name, ())
    return None


def given_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """Return the key a request presents: the `x-functions-key` header when present (even empty), else `?code=`."""
    if FUNCTION_KEY_HEADER in headers:
        return headers[FUNCTION_KEY_HEADER]
    return query.get(KEY_QUERY)


def system_key_status(given: str | None, *, system_key: str | None, other_keys: Iterable[str]) -> int | None:
    """Return what the host answers for the webhook given the presented key: None (the call goes on), 401 (no key,
    a wrong key, or no system key configured) or 403 (a valid key that is not the extension's system key)."""
    if not given:
        return 401
    if system_key and hmac.compare_digest(given.encode(), system_key.encode()):
        return None
    if any(hmac.compare_digest(given.encode(), key.encode()) for key in other_keys if key):
        return 403
    return 401
