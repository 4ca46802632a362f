"""The batch create envelope is held to the rules of ``/v1/messages``: hostile
bodies get a 400 naming the path, never a 500, and nothing is stored.

Bodies are sent raw over a real socket (a client library would not produce
them), then a normal batch shows the server goes on serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RULES, Server, db_env

PARAMS = '{"model":"scripted","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def envelope_server(
    server_factory: Callable[..., Server], module_database_url: str | None
) -> Server:
    # Two keys: batches are scoped to a key, so the hostile one's list shows
    # whether anything it sent was stored.
    return server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--api-key",
        "hostile",
        "--api-key",
        "test-key",
        env=db_env(module_database_url),
    )


def one(custom_id: str = '"a"', params: str = PARAMS) -> str:
    return '{"requests":[{"custom_id":' + custom_id + ',"params":' + params + "}]}"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        # "$" matches before a trailing newline: the id must match as a whole.
        (one(custom_id=r'"a\n"'), "requests.0.custom_id: must be 1 to 64 characters"),
        (one(custom_id=r'"a\u0000"'), "requests.0.custom_id: must be 1 to 64 characters"),
        (
            one(params=PARAMS.replace('"max_tokens":8', '"max_tokens":8,"max_tokens":99')),
            "requests.0.params: the object has the key 'max_tokens' twice",
        ),
        (
            one(params=PARAMS.replace('"role":"user"', '"role":"user","role":"assistant"')),
            "requests.0.params.messages.0: the object has the key 'role' twice",
        ),
        (
            '{"requests":[],' + one()[1:],
            "the request body has the key 'requests' twice in one object",
        ),
        (
            one(custom_id='"a","custom_id":"b"'),
            "requests.0: the object has the key 'custom_id' twice",
        ),
        # Lone surrogates are not text: SQLite's insert used to fail with a 500.
        (
            one(params=PARAMS.replace('"hi"', r'"hi \ud800 there"')),
            "requests.0.params.messages.0.content: the string has a lone UTF-16 surrogate",
        ),
        (
            one(params=PARAMS.replace('"model"', r'"\udfff":1,"model"')),
            r"requests.0.params.\udfff: the key has a lone UTF-16 surrogate",
        ),
        (r'{"requests":[],"\ud800":1}', r"\ud800: Extra inputs are not permitted"),
    ],
    ids=[
        "custom-id-newline",
        "custom-id-nul",
        "duplicate-param",
        "duplicate-nested",
        "duplicate-top",
        "duplicate-custom-id-key",
        "surrogate-value",
        "surrogate-key",
        "surrogate-extra-key",
    ],
)
def test_hostile_envelopes_get_a_400_naming_the_path(
    envelope_server: Server, raw: str, needle: str
) -> None:
    response = httpx.post(
        f"{envelope_server.url}/v1/messages/batches",
        content=raw.encode(),
        headers={"content-type": "application/json", "x-api-key": "hostile"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"], error
    assert error["request_id"]
    # Nothing was stored, and the next client's batch is taken as usual.
    assert not list(envelope_server.client(api_key="hostile").messages.batches.list())
    client = envelope_server.client()
    batch = client.messages.batches.create(
        requests=[{"custom_id": "fine", "params": json.loads(PARAMS)}]  # type: ignore[list-item]
    )
    assert batch.request_counts.processing + batch.request_counts.succeeded == 1
