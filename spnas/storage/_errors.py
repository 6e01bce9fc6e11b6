"""The storage layer's errors."""

from __future__ import annotations

from spnas.exceptions import SpnasError


class StorageError(SpnasError):
    """A storage or artifact store cannot be reached or created."""


class StorageUnreachableError(StorageError):
    """The database did not answer the first connection (a server down, starting or
    restarting, or a refused login): unlike a malformed URL, the same URL may work later."""
