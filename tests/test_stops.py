"""Stop-sequence matching over arbitrarily split text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from parley.engines.stops import StopMatcher


def drive(pieces: list[str], stops: list[str]) -> tuple[str, str | None]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit is not None:
            return "".join(out), hit
    return "".join(out) + matcher.flush(), None


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if stop and at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    return (text, None) if best is None else (text[: best[0]], best[1])


@given(
    st.lists(st.text(alphabet="abcXY", max_size=4), max_size=12),
    st.lists(st.text(alphabet="abcXY", min_size=1, max_size=3), max_size=3),
)
def test_matches_like_a_search_over_the_whole_text(pieces: list[str], stops: list[str]) -> None:
    text, hit = drive(pieces, stops)
    want_text, want_hit = reference("".join(pieces), stops)
    assert text == want_text
    if want_hit is not None:
        assert hit is not None and "".join(pieces).find(hit) == len(want_text)
    else:
        assert hit is None


def test_holds_back_a_possible_prefix() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abc E") == ("abc ", None)
    assert matcher.feed("N") == ("", None)
    assert matcher.feed("X") == ("ENX", None)
    assert matcher.feed("xEND tail") == ("x", "END")
