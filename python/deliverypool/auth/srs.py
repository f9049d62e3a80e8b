"""The Sender Rewriting Scheme for relayed mail: :class:`~deliverypool.SrsRewriter` (Rust,
``rust/auth/srs/``) with its keys read from a file.

The key file holds one key per line, as postsrsd's secrets file does: the first line signs new
addresses, every line verifies (so a new key goes first and the old one stays below it until
the addresses it signed have expired, ``max_age_days``). Blank lines and lines starting with
``#`` are skipped. The file should be readable by the relay only.

Why in Rust: the reversal runs at RCPT for every bounce to the relay's domain, and the parser
faces whatever a remote MTA sends; a Rust parser is fuzzed like the others (``fuzz/``), and the
same code serves the relay and the milter.
"""

from __future__ import annotations

from pathlib import Path

from deliverypool._core import SrsError, SrsRewriter, is_srs

__all__ = ["SrsError", "SrsRewriter", "is_srs", "load_keys", "rewriter_from_key_file"]


def load_keys(path: str | Path) -> list[bytes]:
    """The keys in `path`, signing key first. Raises ValueError naming the file when it cannot
    be read or holds no key."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as error:
        raise ValueError(f"SRS key file {str(path)!r}: {error.strerror or error}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(b"#")]
    if not keys:
        raise ValueError(f"SRS key file {str(path)!r} holds no key")
    return keys


def rewriter_from_key_file(
    domain: str, path: str | Path, *, max_age_days: int = 21, hash_length: int = 4, separator: str = "="
) -> SrsRewriter:
    """An :class:`SrsRewriter` for `domain` with the keys of `path`."""
    return SrsRewriter(domain, load_keys(path), max_age_days=max_age_days, hash_length=hash_length, separator=separator)
