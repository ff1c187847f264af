"""Azure SDK and transport errors of storage calls, translated into the `mapping.errors` tree.

The storage layer's one translation: the table (`mapping.storage.table`) and the queue (`mapping.storage.queue`) each
describe themselves with a `Translation` (the name their messages give them, the error code of their
container gone, the HTTP errors only they know, how they read a server's retry hint) and translate
every call with `Translation.translated`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

from mapping.errors import StorageError, StorageUnavailableError

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_RETRY_AFTER = 5  # seconds a caller is told to wait when the service gave no hint

SpecificError = Callable[[str, HttpResponseError], StorageError | None]


def _nothing_specific(action: str, error: HttpResponseError) -> StorageError | None:
    return None


def _default_retry_after(error: BaseException) -> int:
    return DEFAULT_RETRY_AFTER


class ContainerGoneError(StorageUnavailableError):
    """The table or queue is gone (deleted, or an emulator restarted); it is created again before the next call."""


@dataclass(frozen=True, slots=True)
class Translation:
    """How one storage service's errors translate: its name, its gone code, its own HTTP errors, its retry hint."""

    storage: str  # "table" or "queue": messages say "<storage> storage ..."
    gone_code: str  # the error code that says the table or queue itself is gone (TableNotFound, QueueNotFound)
    specific: SpecificError = _nothing_specific  # the service's own HTTP errors; None: the general translation
    retry_after: Callable[[BaseException], int] = _default_retry_after

    @contextlib.contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """Turn Azure SDK and transport errors of the calls inside into the mapping error tree."""
        try:
            yield
        except StorageError:
            raise
        except HttpResponseError as error:
            raise self._gone(action, error) or self.specific(action, error) or self.error(action, error) from None
        except (TimeoutError, AzureError, OSError) as error:
            raise self.error(action, error) from None

    def _gone(self, action: str, error: HttpResponseError) -> StorageError | None:
        """Return ContainerGoneError when the error says the table or queue itself is gone, else None."""
        if error_code(error) != self.gone_code:
            return None
        logger.warning("%s storage: the %s is gone (%s); it is created again", self.storage, self.storage, action)
        return ContainerGoneError(f"the {self.storage} disappeared ({action})", retry_after_seconds=1)

    def error(self, action: str, error: BaseException) -> StorageError:
        """Return the general translation of an error: refused credentials, a lasting answer, or unavailable."""
        if isinstance(error, ClientAuthenticationError):
            logger.error("%s storage refused the credentials during %s: %s", self.storage, action, type(error).__name__)
            return StorageError(f"{self.storage} storage refused the credentials ({action})")
        status = error.status_code if isinstance(error, HttpResponseError) else None
        if status is not None and status not in TRANSIENT_STATUS:
            logger.error("%s storage answered %s (%s) during %s", self.storage, status, error_code(error), action)
            return StorageError(f"{self.storage} storage answered {status} ({action})")
        logger.warning("%s storage unavailable during %s: %s", self.storage, action, type(error).__name__)
        return StorageUnavailableError(
            f"{self.storage} storage is unavailable ({action})", retry_after_seconds=self.retry_after(error)
        )


def error_code(error: BaseException) -> str | None:
    """Return the service's error code of an HTTP error (`x-ms-error-code`), if it gave one."""
    code = getattr(error, "error_code", None)
    return str(code.value if hasattr(code, "value") else code) if code else None
