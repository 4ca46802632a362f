"""Claude Code (``@anthropic-ai/claude-code`` from npm) runs unchanged against parley.

The CLI is Claude Code's newest release on npm (``tests/cc/package.json`` asks
for ``latest``, without a lockfile: the fixture reinstalls whenever npm's
``latest`` is not what ``tests/cc/node_modules`` holds), so the tests see what a
user who installs it today sees. It runs headless
(``claude -p ... --output-format json``) with ``ANTHROPIC_BASE_URL`` pointing
at a parley started here, a temporary ``HOME`` and working directory, and no
network beyond loopback.

* Scripted engine: a real agent loop. parley answers with Claude Code's own
  tools (Write a file, then Bash ``cat`` it, then a final answer); Claude Code
  executes them in the working directory and sends the results back.
* Embedded model: a plain prompt completes without protocol errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Server

CC = Path(__file__).parent / "cc"
KEY = "cc-test-key"


PACKAGE = "@anthropic-ai/claude-code"


def installed_version() -> str | None:
    manifest = CC / "node_modules" / PACKAGE / "package.json"
    if not manifest.exists() or not (CC / "node_modules" / ".bin" / "claude").exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


@pytest.fixture(scope="module")
def claude() -> Path:
    """Claude Code's newest release, installed into tests/cc when it is not there yet."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install Claude Code for these tests")
    asked = subprocess.run(
        [npm, "view", PACKAGE, "version"], cwd=CC, capture_output=True, text=True, timeout=120
    )
    if asked.returncode != 0:
        pytest.fail(f"npm could not name {PACKAGE}'s newest release:\n{asked.stderr}")
    newest = asked.stdout.strip()
    if installed_version() != newest:
        # That very version (npm may keep an installed copy as satisfying a tag), without
        # writing a lockfile or changing package.json's "latest".
        install = [npm, "install", "--no-package-lock", "--no-save", "--no-audit", "--no-fund"]
        subprocess.run(
            [*install, f"{PACKAGE}@{newest}"],
            cwd=CC,
            check=True,
            timeout=900,
        )
    assert installed_version() == newest, (installed_version(), newest)
    return CC / "node_modules" / ".bin" / "claude"


def run_claude(
    claude: Path,
    server: Server,
    tmp: Path,
    prompt: str,
    *flags: str,
    env: dict[str, str] | None = None,
    ok_exits: tuple[int, ...] = (0,),
) -> tuple[dict[str, Any], Path]:
    home, work = tmp / "home", tmp / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        **(env or {}),
    }
    done = subprocess.run(
        [str(claude), "-p", prompt, "--output-format", "json", *flags],
        cwd=work,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in ok_exits, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result, work


def test_an_agent_loop_with_claude_codes_own_tools(
    claude: Path, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    target = tmp_path / "work" / "hello.txt"
    rules = {
        "rules": [
            {
                "match": {"tool_result": "^File created successfully", "regex": True},
                "reply": {
                    "tool_use": [
                        {
                            "name": "Bash",
                            "input": {"command": "cat hello.txt", "description": "Show"},
                        }
                    ]
                },
            },
            {
                "match": {"tool_result": "hi from parley", "regex": True},
                "reply": {"text": "The file says: hi from parley"},
            },
            {
                "match": {"user": "write the file", "regex": True, "tools": ["Write", "Bash"]},
                "reply": {
                    "text": "Writing it now.",
                    "tool_use": [
                        {
                            "name": "Write",
                            "input": {"file_path": str(target), "content": "hi from parley\n"},
                        }
                    ],
                },
            },
        ]
    }
    script = tmp_path / "rules.yaml"
    script.write_text(yaml.safe_dump(rules))
    server = server_factory("--engine", "scripted", "--script", str(script), "--api-key", KEY)

    result, _ = run_claude(
        claude, server, tmp_path, "Please write the file.", "--allowedTools", "Write", "Bash"
    )

    assert target.read_text() == "hi from parley\n"
    assert result["subtype"] == "success" and not result["is_error"], result
    assert result["result"] == "The file says: hi from parley"
    assert result["num_turns"] == 3 and not result.get("permission_denials")
    # Three requests reached the engine: the prompt, then each tool's result.
    stats = server.stats(KEY)["scripted"]
    assert stats.get("completed", 3) >= 3
    assert "status=400" not in server.log() and "status=500" not in server.log()


def test_bare_mode(claude: Path, server_factory: Callable[..., Server], tmp_path: Path) -> None:
    # --bare ends its request with a system message that carries only a per-turn
    # effort (empty content), which the API accepts.
    script = tmp_path / "rules.yaml"
    script.write_text(yaml.safe_dump({"rules": []}))
    server = server_factory("--engine", "scripted", "--script", str(script), "--api-key", KEY)
    result, _ = run_claude(claude, server, tmp_path, "Echo this.", "--bare")
    assert result["subtype"] == "success" and not result["is_error"], result
    assert result["result"] == "Echo this.", result
    assert "status=400" not in server.log() and "status=500" not in server.log()


@pytest.mark.model
def test_a_plain_prompt_on_the_embedded_model(
    claude: Path, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    # Claude Code asks for temperature 1 and 32,000 tokens: a 135M model sampling at
    # 1.0 sometimes writes until its context is full (minutes on 2 cores). Claude
    # Code's own cap bounds every request; either ending is one the protocol allows:
    # the model ends its turn (success), or it hits max_tokens, Claude Code asks it to
    # go on (up to three times, each capped too) and then says so (it read
    # stop_reason "max_tokens" from the stream). So the run writes at most 4 x cap.
    cap = 96
    server = server_factory("--api-key", KEY)
    result, _ = run_claude(
        claude,
        server,
        tmp_path,
        "Say hello.",
        "--system-prompt",
        "You are a helpful assistant. Answer in one short sentence.",
        "--tools",
        "",
        "--model",
        "claude-haiku-4-5",
        # A 135M model does not end a 32k-token thinking budget by itself: no thinking.
        env={"MAX_THINKING_TOKENS": "0", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(cap)},
        ok_exits=(0, 1),
    )
    assert result["subtype"] == "success", result
    assert isinstance(result["result"], str) and result["usage"]["output_tokens"] > 0, result
    assert result["usage"]["output_tokens"] <= 4 * cap, result
    if result["is_error"]:
        assert f"exceeded the {cap} output token maximum" in result["result"], result
    assert "status=400" not in server.log() and "status=500" not in server.log()
    stats = server.stats(KEY)["smollm2-135m-instruct"]
    assert stats["failed"] == 0 and stats["completed"] >= 1, stats


@pytest.mark.model
def test_a_claude_code_shaped_request_on_the_embedded_model(embedded_server: Server) -> None:
    """What Claude Code sends (logged from a real run of 2.1.332, interactive: see
    tests/data/claude-code), scaled down to fit SmolLM2's context, with the small
    max_tokens Claude Code sends under ``CLAUDE_CODE_MAX_OUTPUT_TOKENS``: adaptive thinking then gets half of it, so the
    whole answer is bounded by max_tokens, never by the model deciding to stop."""
    from tests.test_tool_format import CLAUDE_CODE_LIKE

    cap = 160
    billing = "x-anthropic-billing-header: cc_version=2.1.332.8e2; cc_entrypoint=cli;"
    body = {
        "model": "claude-opus-4-8",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\nToday is Sunday.\n</system-reminder>",
                    },
                    {
                        "type": "text",
                        "text": "Fetch example.org",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
            {
                "role": "system",
                "content": "Available agent types: none.",
                "output_config": {"effort": "low"},
            },
        ],
        "system": [
            {"type": "text", "text": billing},
            {
                "type": "text",
                "text": "You are a Claude agent.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {"name": "Fetch", "description": "Fetch a URL", "input_schema": CLAUDE_CODE_LIKE}
        ],
        "metadata": {"user_id": json.dumps({"device_id": "ab" * 32, "session_id": "s"})},
        "max_tokens": cap,
        "thinking": {"type": "adaptive", "display": "updates"},
        "safeguards": [{"type": "dangerous_tool_use", "classifier_context": {"v": 1}}],
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "low"},
        "stream": True,
    }
    headers = {
        "x-api-key": "k",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
        "context-management-2025-06-27,per-turn-control-2026-07-01,"
        "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,"
        "advanced-tool-use-2025-11-20,effort-2025-11-24,dangerous-tool-use-2026-09-03,"
        "thinking-display-updates-2026-08-18,afk-mode-2026-01-31",
        "x-app": "cli",
    }
    import httpx

    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{embedded_server.url}/v1/messages?beta=true",
        json=body,
        headers=headers,
        timeout=300,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "error" not in kinds
    usage = events[0]["message"]["usage"]
    assert usage["input_tokens"] > 0
    first = next(e for e in events if e["type"] == "content_block_start")
    assert first["index"] == 0 and first["content_block"]["type"] == "thinking"
    assert any(e.get("delta", {}).get("type") == "signature_delta" for e in events)
    final = events[-2]
    assert final["type"] == "message_delta", final
    assert final["delta"]["stop_reason"] in {"end_turn", "max_tokens", "tool_use"}, final
    assert 0 < final["usage"]["output_tokens"] <= cap, final


@pytest.mark.model
def test_context_past_the_trained_length_turns_on_yarn(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--n-ctx", "12288")
    assert 'rope="yarn x1.5"' in server.log()
    info = server.client().models.retrieve("smollm2-135m-instruct")
    assert info.max_input_tokens == 12288
    plain = server_factory("--n-ctx", "12288", "--rope-scaling", "none")
    assert "rope=none" in plain.log()
