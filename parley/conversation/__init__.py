"""A request as the engine sees it (``types``), built from the wire models
(``build``) under the API's rules (``rules``), with cache breakpoint tags
(``marks``) and Claude Code's billing line made cache-friendly
(``claude_code``). No wire model travels further than ``build``.
"""

from parley.conversation.build import build_conversation
from parley.conversation.claude_code import normalize_billing_line
from parley.conversation.rules import EFFORT_BUDGETS, MAX_BREAKPOINTS
from parley.conversation.types import (
    CacheMark,
    Capabilities,
    Conversation,
    ImagePart,
    Part,
    Role,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
    Turn,
)

__all__ = [
    "EFFORT_BUDGETS",
    "MAX_BREAKPOINTS",
    "CacheMark",
    "Capabilities",
    "Conversation",
    "ImagePart",
    "Part",
    "Role",
    "TextPart",
    "ThinkingPart",
    "ToolCallPart",
    "ToolChoice",
    "ToolResultPart",
    "ToolSpec",
    "Turn",
    "build_conversation",
    "normalize_billing_line",
]
