"""Foreign exceptions become parley errors where they cross into parley.

A ``Boundary`` names a foreign library (llama.cpp, httpx...) and maps its
exceptions to parley's error tree (``parley.errors``), the first rule that
matches winning. ``with BOUNDARY.crossing(what, **context):`` around a call
into the library re-raises a matching exception as the ``ParleyError`` its
rule builds (``from`` the original, so the log keeps the cause); a
``ParleyError`` passes through, and anything no rule names is a bug and
propagates as it is. ``what`` says what parley was doing ("decode a batch",
"fetch https://..."); ``context`` carries what a rule's message needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from parley.errors import ParleyError

Build = Callable[[BaseException, str, Mapping[str, Any]], ParleyError]
Rule = tuple[type[BaseException] | tuple[type[BaseException], ...], Build]


@dataclass(frozen=True)
class Boundary:
    library: str
    rules: Sequence[Rule]

    def translate(self, exc: BaseException, what: str, **context: Any) -> ParleyError | None:
        """The parley error for ``exc``, or None when no rule names it."""
        if isinstance(exc, ParleyError):
            return exc
        for kinds, build in self.rules:
            if isinstance(exc, kinds):
                return build(exc, what, context)
        return None

    @contextmanager
    def crossing(self, what: str, **context: Any) -> Iterator[None]:
        try:
            yield
        except ParleyError:
            raise
        except Exception as exc:
            error = self.translate(exc, what, **context)
            if error is None:
                raise
            raise error from exc
