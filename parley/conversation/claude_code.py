"""Claude Code's requests, made cache-friendly without changing what they say."""

from __future__ import annotations

import re

# Claude Code starts its system prompt with a per-request billing line whose
# ``cch=`` value changes every request; left as is, no two prompts share a
# prefix and no KV state can be reused. The value is dropped, the line kept.
_BILLING_CCH = re.compile(r"^(x-anthropic-billing-header:[^\n]*?)\s*cch=[^;\n]*;?", re.MULTILINE)


def normalize_billing_line(text: str) -> str:
    return _BILLING_CCH.sub(r"\1", text)
