"""``--alias-max-tokens``: requests made under a Claude id (Claude Code asks for
32,000-64,000 output tokens) are capped, and end as the API ends an answer at
its max_tokens; requests under the served id keep what they asked for."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import RULES, Server


@pytest.fixture(scope="module")
def capped(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--engine", "scripted", "--script", str(RULES), "--alias-max-tokens", "3")


def test_a_claude_id_is_capped_and_ends_at_max_tokens(capped: Server) -> None:
    client = capped.client()
    ten = [{"role": "user", "content": "count to ten"}]
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64000, messages=ten)  # type: ignore[arg-type]
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert message.content[0].type == "text" and message.content[0].text == "one two three"
    served = client.messages.create(model="scripted", max_tokens=100, messages=ten)  # type: ignore[arg-type]
    assert served.stop_reason == "end_turn"
    assert served.content[0].type == "text" and served.content[0].text.endswith("ten")


def test_a_bad_cap_is_one_line(tmp_path: object) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley",
            "serve",
            "--engine",
            "scripted",
            "--alias-max-tokens",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "alias_max_tokens" in done.stderr and "Traceback" not in done.stderr


def test_the_docs_page_is_opt_in(server_factory: Callable[..., Server], capped: Server) -> None:
    import httpx

    assert httpx.get(capped.url + "/docs").status_code == 404
    docs = server_factory("--engine", "scripted", "--script", str(RULES), "--docs")
    page = httpx.get(docs.url + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert httpx.get(docs.url + "/openapi.json").json()["info"]["title"] == "parley"
