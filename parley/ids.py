"""Identifiers with the Anthropic prefixes (``msg_``, ``toolu_``, ``req_``)."""

from __future__ import annotations

import secrets

# Access is checked by key, never by knowing an id; ids still come from the
# OS's generator, so one id says nothing about the next (a batch id is not
# guessable from another). A few microseconds an id.
_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _token(length: int = 24) -> str:
    """``length`` base-58 digits of a random number (140 bits for the default 24)."""
    n = secrets.randbits(length * 585 // 100)  # 58**length > 2**bits
    digits = []
    for _ in range(length):
        n, r = divmod(n, 58)
        digits.append(_ALPHABET[r])
    return "".join(digits)


def message_id() -> str:
    return "msg_01" + _token()


def tool_use_id() -> str:
    return "toolu_01" + _token()


def request_id() -> str:
    return "req_01" + _token()


def batch_id() -> str:
    return "msgbatch_01" + _token()
