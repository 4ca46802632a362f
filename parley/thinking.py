"""Thinking-block and compaction-block signatures and redaction, keyed by a server secret.

The secret lives in the data dir (``thinking.key``: 32 random bytes, mode
0600, written atomically once), so signatures and redacted data stay valid
across restarts; with a shared database (``--database-url``) it lives there,
so every replica verifies what any other signed. A signature is an
HMAC over the thinking text; redacted thinking is the text sealed with
AES-256-GCM under a key derived from the same secret. A thinking block that
comes back in history with a wrong signature, or redacted data that does not
open, is refused, as the public API refuses tampered thinking.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley import datadir
from parley.config import ConfigError

if TYPE_CHECKING:
    from parley.db.database import Database

KEY_FILE = datadir.KEY
KEY_BYTES = 32


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> Signer:
        """The signer keyed by ``data_dir/thinking.key``, which is created when absent.

        An empty file is replaced by a new key: earlier versions left one when
        they died between creating and writing the file, and a signature made
        with an empty key must not verify. A file of any other length than 32
        bytes is not a key parley wrote: that is a ``ConfigError`` (start-up
        fails) rather than a weak key, or a silent new one that would void
        every signature given out so far.
        """
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / KEY_FILE
        try:
            for _ in range(2):  # a second pass reads the key another process just wrote
                try:
                    key = path.read_bytes()
                except FileNotFoundError:
                    key = secrets.token_bytes(KEY_BYTES)
                    if datadir.write_new(path, key):
                        return cls(key)
                    continue
                if not key:
                    key = secrets.token_bytes(KEY_BYTES)
                    datadir.write_new(path, key, replace=True)
                    return cls(key)
                if len(key) != KEY_BYTES:
                    raise ConfigError(
                        f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte thinking key; "
                        "restore the key, or delete the file to create a new one (thinking "
                        "signatures and redacted thinking given out before will be refused)"
                    )
                datadir.private_file(path)
                return cls(key)
        except OSError as exc:
            raise ConfigError(f"cannot use the thinking key {path}: {exc.strerror or exc}") from exc
        raise ConfigError(f"cannot use the thinking key {path}: it keeps changing")

    @classmethod
    def from_database(cls, db: Database, data_dir: Path) -> Signer:
        """The signer keyed by the database's thinking key. The first replica to
        start stores it: the key of its data dir when it has one (what it signed
        before still verifies), else a new one."""
        from parley.db.secrets import shared_secret

        path = data_dir / KEY_FILE
        try:
            first = path.read_bytes()
        except FileNotFoundError:
            first = b""
        except OSError as exc:
            raise ConfigError(f"cannot read the thinking key {path}: {exc.strerror}") from exc
        if len(first) != KEY_BYTES:
            first = secrets.token_bytes(KEY_BYTES)
        key = shared_secret(db, "thinking_key", first)
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"the database's thinking key has {len(key)} bytes, not {KEY_BYTES}; "
                "delete its row in 'secrets' to create a new one (signatures given out "
                "before will be refused)"
            )
        return cls(key)

    def sign(self, thinking: str) -> str:
        digest = hmac.new(self._key, thinking.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(b"parley1" + digest).decode("ascii")

    def verify(self, thinking: str, signature: str) -> bool:
        # Signatures made here are base64 (ASCII); compare_digest raises TypeError
        # for a non-ASCII str, so such a signature is wrong, not an error. Bytes
        # are compared, whatever the client sent.
        if not signature.isascii():
            return False
        return hmac.compare_digest(self.sign(thinking).encode(), signature.encode())

    def sign_compaction(self, summary: str) -> str:
        """A compaction block's signature: the HMAC of a text no thinking block
        can carry, so neither signature verifies as the other."""
        return self.sign(_COMPACTION + summary)

    def verify_compaction(self, summary: str, signature: str) -> bool:
        return self.verify(_COMPACTION + summary, signature)

    def _sealing_key(self) -> bytes:
        return hmac.new(self._key, b"parley redacted thinking", hashlib.sha256).digest()

    def seal(self, thinking: str) -> str:
        """Redacted-thinking ``data``: the text, encrypted and authenticated."""
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._sealing_key()).encrypt(nonce, thinking.encode("utf-8"), _AAD)
        return base64.b64encode(_AAD + nonce + sealed).decode("ascii")

    def unseal(self, data: str) -> str | None:
        """The thinking text inside ``data``, or None if it was not sealed here."""
        try:
            raw = base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            return None
        if not raw.startswith(_AAD) or len(raw) < len(_AAD) + 12 + 16:
            return None
        nonce, sealed = raw[len(_AAD) : len(_AAD) + 12], raw[len(_AAD) + 12 :]
        try:
            return AESGCM(self._sealing_key()).decrypt(nonce, sealed, _AAD).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            return None


_AAD = b"parley1"
_COMPACTION = "\x00parley compaction\x00"
