"""Foreign exceptions are translated where they cross into parley (``parley.boundary``)."""

from __future__ import annotations

import ctypes

import httpx
import pytest

from parley.boundary import Boundary
from parley.engines.llamacpp.vocab import LLAMA
from parley.errors import EngineError, InvalidRequestError, ModelLoadError, NotFoundError
from parley.fetch import HTTPX


def test_a_llama_cpp_binding_error_becomes_an_engine_error_naming_the_step() -> None:
    with pytest.raises(EngineError) as caught, LLAMA.crossing("decode a batch"):
        raise ctypes.ArgumentError("argument 2: wrong type")
    assert caught.value.message == (
        "llama.cpp could not decode a batch: ArgumentError: argument 2: wrong type"
    )
    assert isinstance(caught.value.__cause__, ctypes.ArgumentError)  # the log keeps the cause


def test_while_loading_it_is_a_model_load_error() -> None:
    expected = pytest.raises(ModelLoadError, match=r"could not load m\.gguf: OSError")
    with expected, LLAMA.crossing("load m.gguf", loading=True):
        raise OSError("libllama.so: cannot open shared object file")


def test_a_memory_error_of_a_kv_copy_fails_the_request_not_the_process() -> None:
    expected = pytest.raises(EngineError, match="copy a sequence's KV state: MemoryError")
    with expected, LLAMA.crossing("copy a sequence's KV state"):
        raise MemoryError()


def test_parley_errors_pass_and_unknown_exceptions_are_bugs_left_as_they_are() -> None:
    with pytest.raises(NotFoundError), LLAMA.crossing("decode a batch"):
        raise NotFoundError("x")
    with pytest.raises(KeyError), LLAMA.crossing("decode a batch"):
        raise KeyError("a bug, not llama.cpp")


def test_httpx_errors_of_a_document_fetch_name_the_path_and_url() -> None:
    what = "messages.0.content.1.source.url: fetching http://127.0.0.1:9/doc"
    with pytest.raises(InvalidRequestError) as caught, HTTPX.crossing(what, timeout=2.0):
        raise httpx.ConnectError("[Errno 111] Connection refused")
    assert caught.value.message == f"{what} failed: [Errno 111] Connection refused"
    slow = pytest.raises(InvalidRequestError, match=r"doc took longer than 2 s$")
    with slow, HTTPX.crossing(what, timeout=2.0):
        raise httpx.ReadTimeout("timed out")


def test_the_first_matching_rule_wins() -> None:
    boundary = Boundary(
        "lib",
        [
            (TimeoutError, lambda exc, what, ctx: InvalidRequestError(f"{what}: slow")),
            (OSError, lambda exc, what, ctx: EngineError(f"{what}: {exc}")),
        ],
    )
    assert isinstance(boundary.translate(TimeoutError(), "call"), InvalidRequestError)
    assert isinstance(boundary.translate(OSError("x"), "call"), EngineError)
    assert boundary.translate(KeyError(), "call") is None
