"""Managed-identity credentials for identity-based connections (azure-identity, async)."""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential


def identity_credential(client_id: str | None) -> AsyncTokenCredential:
    """Return a user-assigned managed identity for `client_id`, else DefaultAzureCredential."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()
