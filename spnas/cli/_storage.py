"""The storage options every command that opens a study shares.

A storage URL may hold a password, and a command line is visible to every user of the
machine (``ps``); ``--storage-file FILE`` (a file holding the URL, e.g. mode 0600) or the
environment variable ``SPNAS_STORAGE`` keep it off the command line. ``--storage URL`` still
works, for URLs without a password.
"""

from __future__ import annotations

import argparse

#: As :data:`spnas.storage.STORAGE_ENV` (not imported: building the parser imports no optuna).
_STORAGE_ENV = "SPNAS_STORAGE"


def add_storage_arguments(parser: argparse.ArgumentParser, url_help: str = "storage URL") -> None:
    """Add ``--storage URL`` and ``--storage-file FILE`` (neither required: ``SPNAS_STORAGE``)."""
    parser.add_argument(
        "--storage",
        help=f"{url_help} (visible to `ps`: use --storage-file or {_STORAGE_ENV} "
        "for URLs with a password)",
    )
    parser.add_argument(
        "--storage-file", metavar="FILE", help="a file whose first line is the storage URL"
    )


def storage_url(args: argparse.Namespace) -> str:
    """The storage URL of a command: ``--storage``, ``--storage-file`` or ``SPNAS_STORAGE``.

    Raises:
        StorageError: when none is given.
    """
    from spnas.storage import storage_url_from

    return storage_url_from(args.storage, args.storage_file)
