"""Storage URLs: where they come from, their forms, and their passwords kept out of sight.

Passwords never appear in logs or error messages: use :func:`redact` on any URL you print,
and :func:`hide_password` on any text (an exception message) that may quote a password; both
work on the URL as written, so a password pasted unencoded is hidden too (one with an '@' is
refused by :func:`check_password_is_readable`: write it percent-encoded). The study stores its
storage URL with the password removed (:func:`strip_password`); workers read the full URL from
``--storage-file`` or the environment variable ``SPNAS_STORAGE`` (:func:`storage_url_from`),
never from their command line, which ``ps`` shows to every user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spnas.storage._errors import StorageError

#: Environment variable holding the storage URL of ``spnas worker`` (and other commands).
STORAGE_ENV = "SPNAS_STORAGE"

# A storage URL as written: "scheme://USER:PASSWORD@HOST…". The user name holds no ':' or '/'
# (it may hold '@': Azure's "user@server"), so the password starts after the first ':' of the
# authority. The password may hold anything ('@', ':', '/', '%', '#', '?': people paste it
# unencoded), so it ends at the LAST '@' of the whitespace-free token. When the '@' was in a
# query instead, this hides too much (harmless); ending at the first '@', as SQLAlchemy and
# urllib do, would show the rest of such a password.
_PASSWORD = re.compile(r"(?P<head>[\w+.-]+://[^:/\s]*:)(?P<password>\S*)(?P<tail>@)")

# Where a parser may cut a password that it misreads as user, host, port, path or query:
# at the URL's delimiters, and around a percent escape (decoded alone, or not at all).
_CUTS = re.compile(r"[@:/?#]|%[0-9A-Fa-f]{2}|%")

#: Pieces of a password shorter than this are not hidden in free text (whole passwords are).
#: Hiding "Hx" or "a" everywhere would garble the message (every "a" of a sentence) to hide
#: at most two characters; and the misreading that would make a driver quote such a piece
#: (an unencoded '@' in the password) is refused by :func:`~spnas.storage.make_storage` before it connects.
_MIN_FRAGMENT = 3


def _parse(url: str) -> Any:
    """The SQLAlchemy URL of ``url``, or ``None`` when it is not one."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # ArgumentError, ValueError: free text, not a URL
        return None


def _written_password(url: str) -> str | None:
    """The password of ``url`` as written in it (see :data:`_PASSWORD`), or ``None``."""
    match = _PASSWORD.search(str(url))
    return match["password"] if match else None


def _fragments(password: str) -> set[str]:
    """Every piece of ``password`` that starts and ends at a cut (:data:`_CUTS`).

    A parser that misreads a password splits it at delimiters only, so whatever it calls user,
    password, host, port, database or query holds such pieces: ``Zq@9:Hx/7%mK`` is read by
    SQLAlchemy as password ``Zq``, host ``9``, port ``Hx`` and database ``7%mK@…``, by urllib
    as host ``9:Hx`` and path ``/7%mK@…``; a driver's error quotes them. All pieces, not only
    the ones today's parsers make: the number is quadratic in the cuts, tiny for a password.
    """
    cuts = {0, len(password)}
    for match in _CUTS.finditer(password):
        cuts.update(match.span())
    ordered = sorted(cuts)
    return {password[i:j] for k, i in enumerate(ordered) for j in ordered[k + 1 :]}


def _secrets(url: str) -> list[str]:
    """What to hide of the password of ``url`` in any text, longest first.

    The password as written, percent-decoded, percent-encoded (as SQLAlchemy renders it), as
    SQLAlchemy read it when that agrees; and every piece of :data:`_MIN_FRAGMENT` characters
    or more that a parser may have split off (:func:`_fragments`), as written and decoded.
    """
    from urllib.parse import quote, unquote

    url = str(url)
    written = _written_password(url)
    parsed = _parse(url)
    read = None if parsed is None or parsed.password is None else str(parsed.password)
    whole: set[str] = set()
    pieces: set[str] = set()
    if written is not None:
        decoded = unquote(written)
        whole |= {written, decoded, quote(decoded, safe="")}
        for piece in _fragments(written) | _fragments(decoded):
            pieces |= {piece, unquote(piece)}
    if read is not None:
        if written is None or read == unquote(written):
            whole |= {read, quote(read, safe="")}
        else:  # a misreading: a piece of the password as written, hidden as the others are
            pieces.add(read)
    found = {s for s in whole if s} | {s for s in pieces if len(s) >= _MIN_FRAGMENT}
    return sorted(found, key=len, reverse=True)


def _hide(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, longest first (one pass)."""
    if not secrets:
        return text
    return re.sub("|".join(map(re.escape, secrets)), "***", text)


def redact(url: str) -> str:
    """``url`` (or a text quoting URLs) with every password replaced by ``***``.

    Works on the text as written (:data:`_PASSWORD`): a password is hidden whole whatever its
    characters, percent-encoded or not, even where SQLAlchemy would read the URL otherwise.
    """
    return _PASSWORD.sub(r"\g<head>***\g<tail>", str(url))


def hide_password(text: str, url: str) -> str:
    """``text`` (an exception message) with the password of ``url`` hidden wherever it occurs:
    as written, decoded or encoded, and any piece of it a parser may have split off (see
    :func:`_secrets`); and any URL's password in it redacted (:func:`redact`)."""
    return redact(_hide(str(text), _secrets(str(url))))


def strip_password(url: str) -> str:
    """``url`` without its password (the form a study stores); other URLs unchanged.

    Cut from the text as written (:data:`_PASSWORD`), so that no piece of a password with an
    unencoded '@', ':' or '/' stays behind as a user, host or path.
    """
    url = str(url)
    match = _PASSWORD.search(url)
    if match is None:
        return url
    return url[: match.start("password") - 1] + url[match.end("password") :]


def check_password_is_readable(url: str) -> None:
    """Refuse a URL whose password holds an unencoded '@' (or that has an '@' after it).

    SQLAlchemy ends the password at the first '@': it would send a piece of the password as
    host name (to DNS), port or database, and the driver's error would quote these pieces.

    Raises:
        StorageError: naming the URL, password hidden.
    """
    password = _written_password(url)
    if password is not None and "@" in password:
        raise StorageError(
            f"storage URL {redact(url)!r}: its password holds an '@' (or an '@' follows it), "
            "so where it ends is ambiguous: write the password percent-encoded "
            "(Python: urllib.parse.quote(password, safe=''))"
        )


def storage_url_from(
    url: str | None = None, file: str | Path | None = None, *, what: str = "--storage"
) -> str:
    """The storage URL a command runs on: ``url`` (``--storage``, shown by ``ps``: avoid it
    when the URL holds a password), else the first line of ``file`` (``--storage-file``), else
    the environment variable ``SPNAS_STORAGE``.

    Raises:
        StorageError: when none is given, or the file cannot be read.
    """
    import os

    if url:
        return str(url)
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise StorageError(f"--storage-file {str(file)!r} cannot be read: {exc}") from None
        if not lines:
            raise StorageError(f"--storage-file {str(file)!r} is empty: expected a storage URL")
        return lines[0]
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    raise StorageError(f"no storage: pass {what} URL, --storage-file FILE or set {STORAGE_ENV}")


#: The storage URLs :func:`~spnas.storage.make_storage` opens: scheme (before ``://``) and its drivers.
_STORAGE_SCHEME = re.compile(r"^(grpc|journal|sqlite|(postgresql|mysql)(\+\w+)?)://")


def check_storage_url(url: str) -> None:
    """Refuse a storage URL :func:`~spnas.storage.make_storage` would not open, by its form alone: no file,
    directory or connection is made, so a search checks it before creating anything.

    Raises:
        StorageError: naming the URL (password hidden) and the forms expected.
    """
    url = str(url)
    if _STORAGE_SCHEME.match(url) or (url.endswith(".log") and "://" not in url):
        return
    raise StorageError(
        f"storage URL {redact(url)!r}: expected sqlite:///FILE, "
        "postgresql+psycopg2://USER:PASSWORD@HOST/DB, grpc://HOST:PORT or journal:///FILE.log"
    )
