"""UpstreamBackend and its replicas against real llama-cpp-python servers on loopback.

The tiny GGUF's text is gibberish: these tests assert structure (event order, finish reasons,
which replica served what, how failures surface), never wording.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from models.backend import BackendOptions
from models.events import Finish, TextDelta
from models.request import Request, SamplingParams, text_message
from models.catalog import ModelSpec
from models.errors import FimNotSupported, UpstreamUnavailable
from models.upstream_backend import UpstreamBackend
from tiny_gguf import write_tiny_gguf
from upstream_harness import LONG_STREAM_BIAS, LlamaCppServer, MisbehavingServer, UnreachableServer, free_port

CHAT = Request("chat", messages=(text_message("user", "hello"),), params=SamplingParams(max_tokens=8))


def upstream_spec(urls: list[str], **source) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": "tiny-upstream", "labels": ["chat"], "n_ctx": 4096, "source": {"kind": "upstream", "urls": urls, **source}}
    )


def run(backend: UpstreamBackend, request: Request, cancel: threading.Event | None = None) -> list:
    return list(backend.generate(request, cancel or threading.Event()))


def long_request(n: int = 3000) -> Request:
    return Request("complete", prompt="x", params=SamplingParams(max_tokens=n, logit_bias=LONG_STREAM_BIAS))


def assert_stream_shape(events: list) -> Finish:
    assert events, "no events"
    assert all(isinstance(e, TextDelta) for e in events[:-1]), events
    done = events[-1]
    assert isinstance(done, Finish), done
    return done


@pytest.fixture(scope="module")
def long_gguf(tmp_path_factory):
    """The tiny model with room for long streams (8k context)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-long.gguf", fim_family="qwen", n_ctx=8192)


@pytest.fixture(scope="module")
def two_replicas(long_gguf, tmp_path_factory):
    """Two llama-cpp-python servers of the same model: replica A and replica B."""
    log_dir = tmp_path_factory.mktemp("upstream-logs")
    servers = [LlamaCppServer(long_gguf, log_dir, n_ctx=4096) for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def make_backend():
    """UpstreamBackends closed at teardown, with fast backoff so recovery is observable."""
    made: list[UpstreamBackend] = []

    def make(urls, options: BackendOptions | None = None, **source) -> UpstreamBackend:
        backend = UpstreamBackend(
            upstream_spec(urls, **source), options or BackendOptions(), backoff_base_s=0.2, backoff_max_s=1.0
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def misbehaving():
    servers: list[MisbehavingServer] = []

    def make(mode: str) -> MisbehavingServer:
        server = MisbehavingServer(mode)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# --- the three kinds, streamed -----------------------------------------------------------------


def test_chat_complete_and_fim_stream_through_a_real_upstream(two_replicas, make_backend):
    backend = make_backend([two_replicas[0].url], fim_family="qwen")
    assert backend.capabilities.fim and backend.parallel >= 2
    requests = [
        CHAT,
        Request("complete", prompt="def add(a, b):", params=SamplingParams(max_tokens=8)),
        Request("fim", prefix="def add(a, b):\n    ", suffix="\n", params=SamplingParams(max_tokens=8)),
    ]
    for request in requests:
        done = assert_stream_shape(run(backend, request))
        assert done.reason in ("stop", "length") and done.error is None
        assert done.usage.prompt_tokens > 0
    assert two_replicas[0].requests_served("/v1/chat/completions") >= 1
    assert two_replicas[0].requests_served("/v1/completions") >= 2


def test_fim_prompt_is_built_for_the_upstream_family(make_backend):
    """FIM to an OpenAI-style upstream goes as /v1/completions with the family's own tokens and stops;
    a client's prompt pre-templated for another family is rewritten into the upstream's."""
    backend = make_backend([f"http://127.0.0.1:{free_port()}"], fim_family="qwen")
    call = backend._prepare(Request("fim", prefix="a = ", suffix="\nb = 2\n"))
    assert call.path == "/v1/completions"
    assert call.body["prompt"] == "<|fim_prefix|>a = <|fim_suffix|>\nb = 2\n<|fim_middle|>"
    assert "<|endoftext|>" in call.body["stop"] and "<|file_sep|>" in call.body["stop"]

    # Every sampling knob is explicit: an omitted one would take the upstream's own default
    # (llama-cpp-python's server uses repeat_penalty 1.1 where ours is 1.0).
    assert {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "typical_p"} <= set(call.body)
    assert call.body["repeat_penalty"] == 1.0

    starcoder_prompt = "<fim_prefix>a = <fim_suffix>\nb = 2\n<fim_middle>"
    call = backend._prepare(Request("complete", prompt=starcoder_prompt))
    assert call.body["prompt"] == "<|fim_prefix|>a = <|fim_suffix|>\nb = 2\n<|fim_middle|>"


def test_llama_cpp_api_sends_fim_to_infill(make_backend):
    backend = make_backend([f"http://127.0.0.1:{free_port()}"], api="llama.cpp")
    assert backend.capabilities.fim
    call = backend._prepare(Request("fim", prefix="a = ", suffix="\n", params=SamplingParams(max_tokens=5)))
    assert call.path == "/infill"
    assert call.body["input_prefix"] == "a = " and call.body["input_suffix"] == "\n" and call.body["n_predict"] == 5


def test_fim_without_a_family_is_refused_clearly(make_backend):
    backend = make_backend([f"http://127.0.0.1:{free_port()}"])  # api openai, no fim_family
    assert not backend.capabilities.fim
    with pytest.raises(FimNotSupported, match="fim_family"):
        run(backend, Request("fim", prefix="a", suffix="b"))


def test_tokens_arrive_while_the_upstream_is_still_generating(two_replicas, make_backend):
    """No buffering: the first token reaches us long before the stream ends."""
    backend = make_backend([two_replicas[0].url])
    start = time.perf_counter()
    first = None
    for event in backend.generate(long_request(400), threading.Event()):
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    assert isinstance(event, Finish) and event.reason == "length"
    assert event.usage.completion_tokens > 300
    assert first is not None and first < total / 4, (first, total)


# --- balancing, failover, errors -----------------------------------------------------------------


def test_sequential_requests_round_robin_over_two_replicas(two_replicas, make_backend):
    a, b = two_replicas
    before = [s.requests_served("/v1/chat/completions") for s in two_replicas]
    backend = make_backend([a.url, b.url])
    for _ in range(8):
        assert assert_stream_shape(run(backend, CHAT)).error is None
    served = [s.requests_served("/v1/chat/completions") - n for s, n in zip(two_replicas, before)]
    assert served == [4, 4], served
    assert [r["requests"] for r in backend.replicas.snapshot()] == [4, 4]


def test_concurrent_requests_go_to_the_least_busy_replica(two_replicas, make_backend):
    """Two long streams at once land on different replicas (least outstanding requests)."""
    a, b = two_replicas
    before = [s.requests_served("/v1/completions") for s in two_replicas]
    backend = make_backend([a.url, b.url])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(backend, long_request(300)), range(2)))
    for events in results:
        assert assert_stream_shape(events).reason == "length"
    served = [s.requests_served("/v1/completions") - n for s, n in zip(two_replicas, before)]
    assert served == [1, 1], served


def test_failover_when_a_replica_is_killed_mid_run(long_gguf, tmp_path, make_backend):
    """Kill replica A between requests: every request still succeeds (on B), A is taken out, and
    once A is back on its port the health checks return it to the rotation."""
    a = LlamaCppServer(long_gguf, tmp_path, n_ctx=4096).start()
    b = LlamaCppServer(long_gguf, tmp_path, n_ctx=4096).start()
    try:
        backend = make_backend([a.url, b.url])
        for _ in range(4):
            assert assert_stream_shape(run(backend, CHAT)).error is None
        a.kill()
        b_before = b.requests_served("/v1/chat/completions")
        for _ in range(6):
            assert assert_stream_shape(run(backend, CHAT)).error is None
        assert b.requests_served("/v1/chat/completions") - b_before == 6
        state = {r["url"]: r for r in backend.replicas.snapshot()}
        assert state[a.url]["healthy"] is False and "connect" in state[a.url]["last_error"].lower()

        a.start()
        deadline = time.monotonic() + 15
        while not backend.replicas.snapshot()[0]["healthy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backend.replicas.snapshot()[0]["healthy"], "replica A never came back"
        for _ in range(4):
            assert assert_stream_shape(run(backend, CHAT)).error is None
        assert a.requests_served("/v1/chat/completions") == 2
    finally:
        a.kill()
        b.kill()


def test_replica_killed_mid_stream_ends_with_an_error_event(long_gguf, tmp_path, make_backend):
    server = LlamaCppServer(long_gguf, tmp_path, n_ctx=4096).start()
    try:
        backend = make_backend([server.url])
        events = []
        for event in backend.generate(long_request(3000), threading.Event()):
            events.append(event)
            if len(events) == 5:
                server.kill()
        done = assert_stream_shape(events)
        assert len(events) > 5
        assert done.reason == "error"
        assert server.url in done.error and "mid-stream" in done.error
        assert backend.replicas.snapshot()[0]["healthy"] is False
    finally:
        server.kill()


def test_all_replicas_down_is_upstream_unavailable(make_backend):
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    backend = make_backend(urls)
    with pytest.raises(UpstreamUnavailable) as info:
        run(backend, CHAT)
    assert all(url in info.value.message for url in urls)
    assert info.value.status == 502
    # While both are backing off, the next request fails fast instead of hanging.
    start = time.perf_counter()
    with pytest.raises(UpstreamUnavailable):
        run(backend, CHAT)
    assert time.perf_counter() - start < 2


# --- timeouts and cancellation -------------------------------------------------------------------


def test_first_token_timeout(misbehaving, make_backend):
    silent = misbehaving("silent")
    backend = make_backend([silent.url], BackendOptions(first_token_timeout_s=0.5))
    start = time.perf_counter()
    with pytest.raises(UpstreamUnavailable, match="no first token within 0.5s"):
        run(backend, CHAT)
    assert time.perf_counter() - start < 3


def test_first_token_timeout_fails_over_to_another_replica(two_replicas, misbehaving, make_backend):
    silent = misbehaving("silent")
    backend = make_backend([silent.url, two_replicas[1].url], BackendOptions(first_token_timeout_s=0.5))
    done = assert_stream_shape(run(backend, CHAT))  # first pick: the silent one, then the real one
    assert done.error is None and done.reason in ("stop", "length")
    assert len(silent.connections) == 1
    assert backend.replicas.snapshot()[0]["healthy"] is False


def test_idle_stream_timeout_ends_with_an_error_event(misbehaving, make_backend):
    stalling = misbehaving("stall")
    backend = make_backend([stalling.url], BackendOptions(idle_stream_timeout_s=0.5))
    events = run(backend, Request("complete", prompt="x"))
    done = assert_stream_shape(events)
    assert [e.text for e in events[:-1]] == ["x"]
    assert done.reason == "error" and "silent for more than 0.5s" in done.error


def test_connect_timeout_is_configurable(make_backend):
    """A server whose accept queue is full: the connect timeout, not the OS default, bounds the wait."""
    unreachable = UnreachableServer()
    try:
        backend = make_backend([unreachable.url], BackendOptions(connect_timeout_s=0.3))
        start = time.perf_counter()
        with pytest.raises(UpstreamUnavailable, match="connect timed out"):
            run(backend, CHAT)
        assert time.perf_counter() - start < 2
    finally:
        unreachable.close()


def test_cancel_cuts_a_silent_upstream_at_once(misbehaving, make_backend):
    silent = misbehaving("silent")
    backend = make_backend([silent.url], BackendOptions(first_token_timeout_s=60))
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.perf_counter()
    events = run(backend, CHAT, cancel)
    assert time.perf_counter() - start < 1.5
    assert [type(e) for e in events] == [Finish] and events[0].reason == "cancelled"
    assert backend.replicas.snapshot()[0]["healthy"] is True  # our cancel is not the replica's fault


def test_cancel_mid_stream_closes_the_upstream_stream(two_replicas, make_backend):
    backend = make_backend([two_replicas[0].url])
    cancel = threading.Event()
    events = []
    start = time.perf_counter()
    for event in backend.generate(long_request(3000), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    assert time.perf_counter() - start < 5  # 3000 tokens take ~15 s here
    done = assert_stream_shape(events)
    assert done.reason == "cancelled" and len(events) <= 5


# --- slots per replica ---------------------------------------------------------------------------


def test_parallel_one_queues_here_instead_of_cutting_streams_short(two_replicas, make_backend):
    """llama-cpp-python serves one generation at a time and ends a stream early when another request
    waits for its model. With `parallel: 1` the second request waits here for the replica's slot."""
    backend = make_backend([two_replicas[0].url], parallel=1)
    assert backend.parallel == 1
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(backend, long_request(200)), range(2)))
    for events in results:
        done = assert_stream_shape(events)
        assert done.reason == "length" and done.error is None, done


def test_an_interrupted_stream_is_reported_never_passed_off_as_finished(two_replicas, make_backend):
    """Two at once on one llama-cpp-python replica (4 slots assumed): whichever it cuts short ends
    with an error event naming the interruption (or is retried), never a silent 'stop'."""
    backend = make_backend([two_replicas[0].url])
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, backend, long_request(600)) for _ in range(2)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(assert_stream_shape(future.result()))
            except UpstreamUnavailable as exc:
                outcomes.append(exc)
    for outcome in outcomes:
        if isinstance(outcome, Finish):
            assert outcome.reason == "length" or "interrupted" in (outcome.error or ""), outcome
        else:
            assert "interrupted" in outcome.message
    assert any(isinstance(o, Finish) and o.reason == "length" for o in outcomes)
    assert backend.replicas.snapshot()[0]["healthy"]  # cut short on purpose: not the replica's fault
