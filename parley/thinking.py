"""Thinking-block signatures and redaction, keyed by a server secret.

The secret lives in the data dir (``thinking.key``, created once, mode 0600),
so signatures and redacted data stay valid across restarts. A signature is an
HMAC over the thinking text; redacted thinking is the text sealed with
AES-256-GCM under a key derived from the same secret. A thinking block that
comes back in history with a wrong signature, or redacted data that does not
open, is refused, as the public API refuses tampered thinking.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "thinking.key"


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> Signer:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
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
