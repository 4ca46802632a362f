"""``engines.vllm``: each API key's requests carry a ``cache_salt`` of their own.

vLLM salts its prefix-cache block hashes with it, so tenants neither share
cached prefixes nor learn from their timing what another sent. Checked on the
request body (no vLLM needed; ``test_vllm.py`` runs the real one).
"""

from __future__ import annotations

import re

from parley.engines.base import SamplingParams
from parley.engines.vllm.engine import _body, cache_salt


def test_a_tenant_gets_its_own_salt_within_vllms_rules() -> None:
    salts = {cache_salt(owner) for owner in ("a" * 64, "b" * 64)}
    assert len(salts) == 2
    for salt in salts:  # vLLM: 1..128 characters, none of @ / \ NUL
        assert re.fullmatch(r"[0-9a-f]{64}", salt)
    assert cache_salt("a" * 64) not in ("a" * 64, "")  # not the key's scope itself


def test_the_body_carries_the_salt_only_for_a_keyed_request() -> None:
    keyed = _body("m", [1, 2], 5, SamplingParams(max_tokens=5, tenant="x" * 64), None)
    assert keyed["cache_salt"] == cache_salt("x" * 64)
    plain = _body("m", [1, 2], 5, SamplingParams(max_tokens=5), None)
    assert "cache_salt" not in plain  # no keys configured: one tenant
