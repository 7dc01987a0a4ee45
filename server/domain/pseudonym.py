"""Pseudonymization: user ids become keyed HMAC-SHA256 pseudonyms before anything is stored.

With ``PORTRAIT_PSEUDONYM_KEY_FILE`` set, the server maps every incoming ``user_id`` to
``<version>_<hex HMAC-SHA256(key, user_id), 128 bits>`` at its edge (``ProfileCore``); the pipeline,
the event log, checkpoints, Redis keys and values and the offline parquet files only ever see the
pseudonym. Callers keep using raw ids; ``GetProfile`` answers with the caller's raw id.

The key file holds one key per line, ``VERSION:SECRET`` (version: 1..8 of ``a-z0-9``; secret: at
least 32 bytes of hex, e.g. ``openssl rand -hex 32``); ``#`` starts a comment. The **last** line is
the active key; earlier lines are retired keys, still used by ``DeleteUser`` to erase what was
stored under them. Rotating = appending a new line: from then on every user gets a new pseudonym,
i.e. starts a new profile (HMAC is one-way, so old data cannot be re-keyed without raw ids).

>>> p = Pseudonymizer([("k1", bytes(32)), ("k2", bytes(range(32)))])
>>> p.map("alice")
'k2_6eefad2bed97b6d93ee663d67a44b460'
>>> p.all("alice")[0]
'k1_ce3837f76a54a635191b1704ac767226'
>>> Pseudonymizer.identity().map("alice")
'alice'
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import stat
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^[a-z0-9]{1,8}$")
MIN_KEY_BYTES = 32


class PseudonymKeyError(ValueError):
    """The pseudonym key file is unusable (the server refuses to start)."""


class Pseudonymizer:
    """Maps raw user ids to pseudonyms (or leaves them, when no keys are configured)."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        self.keys = tuple(keys)
        self._active = self.keys[-1] if self.keys else None

    @classmethod
    def identity(cls) -> Pseudonymizer:
        """No pseudonymization: ids are stored as sent."""
        return cls(())

    @property
    def enabled(self) -> bool:
        """True when ids are pseudonymized."""
        return self._active is not None

    @classmethod
    def load(cls, path: Path | None) -> Pseudonymizer:
        """Read the key file (None: identity). Raises ``PseudonymKeyError`` naming the bad line."""
        if path is None:
            return cls.identity()
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read the pseudonym key file: {exc.strerror}") from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the pseudonym key file %s is readable by group/others; chmod 600 it", path)
        keys: list[tuple[str, bytes]] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            version, sep, secret = line.partition(":")
            if not sep or not _VERSION.match(version):
                raise PseudonymKeyError(f"pseudonym key file, line {n}: expected VERSION:HEX_SECRET, "
                                        "VERSION 1..8 of a-z0-9")
            try:
                key = bytes.fromhex(secret.strip())
            except ValueError:
                raise PseudonymKeyError(f"pseudonym key file, line {n}: the secret is not hex") from None
            if len(key) < MIN_KEY_BYTES:
                raise PseudonymKeyError(f"pseudonym key file, line {n}: the secret must be at least "
                                        f"{MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex digits)")
            if any(v == version for v, _ in keys):
                raise PseudonymKeyError(f"pseudonym key file, line {n}: version {version!r} appears twice")
            keys.append((version, key))
        if not keys:
            raise PseudonymKeyError("the pseudonym key file holds no key")
        return cls(keys)

    @staticmethod
    def _one(version: str, key: bytes, user_id: str) -> str:
        return f"{version}_{hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]}"

    def map(self, user_id: str) -> str:
        """The stored id of ``user_id`` under the active key (the id itself when disabled; '' stays '')."""
        if self._active is None or not user_id:
            return user_id
        return self._one(*self._active, user_id)

    def all(self, user_id: str) -> list[str]:
        """The stored ids of ``user_id`` under every key, retired ones first (for erasure)."""
        if self._active is None:
            return [user_id]
        return [self._one(v, k, user_id) for v, k in self.keys]
