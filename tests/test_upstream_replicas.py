"""ReplicaSet bookkeeping: least outstanding requests, backoff, probing back to health.

The replicas here are real loopback endpoints: a port nobody listens on (down) and a tiny
socket server that answers health checks (up). The clock is the set's own parameter and probing
happens only in acquire()/probe(), so the backoff arithmetic is checked exactly without sleeping.
"""

from __future__ import annotations

import httpx
import pytest

from models.errors import UpstreamUnavailable
from models.replicas import ReplicaSet
from upstream_harness import MisbehavingServer, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client():
    with httpx.Client() as c:
        yield c


@pytest.fixture
def healthy_server():
    server = MisbehavingServer("silent")  # answers GET /health with 200, which is all a probe asks
    yield server
    server.close()


def make(urls, client, clock, **kw) -> ReplicaSet:
    return ReplicaSet("m", urls, client, clock=clock, background_health=False, **kw)


def test_least_outstanding_then_round_robin(client):
    clock = Clock()
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    replicas = make(urls, client, clock)
    try:
        a = replicas.acquire()
        b = replicas.acquire()
        c = replicas.acquire()
        assert [a.url, b.url, c.url] == urls  # all idle: in turn
        replicas.release(b)
        assert replicas.acquire() is b  # the only one with nothing in flight
        for r in (a, b, c):
            replicas.release(r)
        # All idle again: the one picked longest ago goes first.
        assert replicas.acquire() is a
    finally:
        replicas.close()


def test_backoff_doubles_up_to_the_cap_and_a_success_resets_it(client):
    clock = Clock()
    replicas = make([f"http://127.0.0.1:{free_port()}"], client, clock, backoff_base_s=0.5, backoff_max_s=3.0)
    try:
        replica = replicas.replicas[0]
        delays = []
        for _ in range(5):
            replicas.mark_failed(replica, "boom")
            delays.append(replica.down_until - clock.now)
        assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
        replicas.mark_ok(replica)
        replicas.mark_failed(replica, "boom")
        assert replica.down_until - clock.now == 0.5
    finally:
        replicas.close()


def test_a_backed_off_replica_is_probed_when_its_backoff_ends(client, healthy_server):
    clock = Clock()
    replicas = make([healthy_server.url], client, clock, backoff_base_s=5.0)
    try:
        replica = replicas.replicas[0]
        replicas.mark_failed(replica, "connection refused")
        with pytest.raises(UpstreamUnavailable, match="connection refused"):
            replicas.acquire()  # still backing off: no probe, a fast clear refusal
        clock.now += 5.0
        assert replicas.acquire() is replica  # backoff over: probed on the spot, healthy again
        assert replica.healthy and replica.last_error is None
    finally:
        replicas.close()


def test_a_probe_of_a_dead_replica_extends_its_backoff(client):
    clock = Clock()
    url = f"http://127.0.0.1:{free_port()}"
    replicas = make([url], client, clock, backoff_base_s=1.0)
    try:
        replica = replicas.replicas[0]
        replicas.mark_failed(replica, "first failure")
        clock.now += 1.0
        assert replicas.probe(replica) is False
        assert "health check failed" in replica.last_error
        assert replica.down_until - clock.now == 2.0
        with pytest.raises(UpstreamUnavailable, match=url):
            replicas.acquire()
    finally:
        replicas.close()


def test_a_slow_health_check_does_not_take_a_busy_replica_out(client):
    """llama-cpp-python's /v1/models waits for the model lock: busy is not dead."""
    busy = MisbehavingServer("busy")
    replicas = make([busy.url], client, Clock(), health_timeout_s=0.3)
    try:
        replica = replicas.replicas[0]
        assert replicas.probe(replica) is True and replica.healthy
        replicas.mark_failed(replica, "first token timed out")
        assert replicas.probe(replica) is False  # once out, only a real answer brings it back
        assert "timed out" in replica.last_error
    finally:
        replicas.close()
        busy.close()


def test_routine_probes_stop_where_there_is_no_dedicated_health_endpoint(client, tmp_path, tiny_gguf):
    """llama-cpp-python has no /health; its /v1/models takes the model lock and a waiting request
    makes it interrupt the stream it is serving, so healthy replicas of it are not polled."""
    from upstream_harness import LlamaCppServer

    server = LlamaCppServer(tiny_gguf, tmp_path).start()
    replicas = ReplicaSet("m", [server.url], client, background_health=False)
    try:
        replica = replicas.replicas[0]
        replicas._routine_probe(replica)
        assert replica.routine_probes is False and replica.healthy
        replicas.mark_failed(replica, "boom")
        assert replicas.probe(replica) is True  # recovery probes still use /v1/models
        assert replica.health_path == "/v1/models"
    finally:
        replicas.close()
        server.kill()


def test_a_full_replica_makes_the_next_request_wait_for_its_slot(client):
    import threading
    import time

    replicas = make([f"http://127.0.0.1:{free_port()}"], client, Clock(), slots_per_replica=1)
    try:
        first = replicas.acquire()
        with pytest.raises(UpstreamUnavailable, match="busy"):
            replicas.acquire(wait_s=0.2)
        cancel = threading.Event()
        threading.Timer(0.1, cancel.set).start()
        assert replicas.acquire(wait_s=5, cancel=cancel) is None
        threading.Timer(0.1, replicas.release, args=(first,)).start()
        start = time.monotonic()
        assert replicas.acquire(wait_s=5) is first
        assert time.monotonic() - start < 2
    finally:
        replicas.close()
