"""Thinking-block signatures: an HMAC over the thinking text with a server secret.

The secret lives in the data dir (``thinking.key``, created once, mode 0600),
so signatures stay valid across restarts. A thinking block that comes back
in history with a missing or wrong signature is refused, as the public API
refuses tampered thinking.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

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
        return hmac.compare_digest(self.sign(thinking), signature)
