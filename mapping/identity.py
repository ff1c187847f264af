"""Managed-identity credentials for identity-based connections (azure-identity, async)."""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential


def identity_credential(client_id: str | None, *, managed: bool = False) -> AsyncTokenCredential:
    """Return a managed identity (user-assigned for `client_id`, or system-assigned when `managed`), else
    DefaultAzureCredential."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    if managed:
        return ManagedIdentityCredential()
    return DefaultAzureCredential()
