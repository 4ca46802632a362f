"""Identifiers with the Anthropic prefixes (``msg_``, ``toolu_``, ``req_``)."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def message_id() -> str:
    return "msg_01" + _token()


def tool_use_id() -> str:
    return "toolu_01" + _token()


def request_id() -> str:
    return "req_01" + _token()


def batch_id() -> str:
    return "msgbatch_01" + _token()
