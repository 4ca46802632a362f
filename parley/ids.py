"""Identifiers with the Anthropic prefixes (``msg_``, ``toolu_``, ``req_``)."""

from __future__ import annotations

import os
import random

# Ids are unique, not secret (nothing is authorised by knowing one): a PRNG
# seeded from the OS is enough, and far cheaper than a syscall per id.
_random = random.Random(os.urandom(32))
_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _token(length: int = 24) -> str:
    """``length`` base-58 digits of a random number (140 bits for the default 24)."""
    n = _random.getrandbits(length * 585 // 100)  # 58**length > 2**bits
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
