"""One exception tree for the mapping library; Azure errors are translated into it by the storage layer
(`mapping.storage.errors`, for the table and the queue)."""

from __future__ import annotations


class MappingError(Exception):
    """Root of every error the mapping library raises."""


class ConfigurationError(MappingError):
    """An app setting is missing or malformed."""


class InvalidNameError(MappingError, ValueError):
    """A user name or connection id breaks the naming rules."""


class InvalidRequestError(MappingError, ValueError):
    """A send request, a page token or another caller input is malformed."""


class RefusedError(InvalidRequestError):
    """A well-formed request the deployment's policy refuses (PRESENCE_WATCH); `details` name what was refused."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class PayloadTooLargeError(InvalidRequestError):
    """A request body is over the size limit."""


class UserOfflineError(MappingError):
    """The recipient of a message has no live connection."""


class SignalRUnavailableError(MappingError):
    """SignalR Service could not be asked (not configured, unreachable, or it refused); nothing was changed."""


class StorageError(MappingError):
    """Storage (the table, or a queue) failed or could not be reached; the operation did not take effect."""

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class StorageUnavailableError(StorageError):
    """Storage could not be reached, timed out, or is throttling."""


class ConflictError(StorageError):
    """A write met a row that changed, vanished or already existed; read again and decide again."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # in a transaction: the operation that failed, when the service says


class RowChangedError(ConflictError):
    """The row was missing, or its ETag no longer matched (404 or 412)."""


class RowExistsError(ConflictError):
    """A create found the row already there (409)."""


class BatchRejectedError(StorageError):
    """The service refused a transaction as malformed (seen with U+2028/U+2029 in keys on Azurite)."""
