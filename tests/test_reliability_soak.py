"""A short soak (about 20 s) in the normal test run; bench/soak.py runs it for minutes.

Mixed requests in every dialect, both models, at twice the pool's concurrency: nothing lost,
nothing mixed up (greedy decoding: each answer must equal its request's answer when run alone),
resident memory flat, the pool idle and no threads left behind afterwards.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from bench_loader import load_bench

soak = load_bench("soak")


@pytest.mark.timeout(600)
def test_short_soak_loses_nothing_mixes_nothing_and_memory_stays_flat(tmp_path):
    with soak.tiny_server(tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:  # load both models first
            for model in ("chat", "code_edit"):
                assert client.post("/api/generate", json={"model": model, "prompt": ""}).json()["done_reason"] == "load"
        threads_before = threading.active_count()
        concurrency = 2 * soak.pool_concurrency(server)
        assert concurrency >= 4  # two models, one slot each: requests queue behind each other too
        report = soak.soak(server.url, duration_s=20, concurrency=concurrency, distinct=36, seed=8)
        summary = {k: v for k, v in report.as_dict().items() if k != "rss_samples"}

        assert report.lost == [], summary
        assert report.mixed == [], summary
        assert report.requests >= 100, summary
        assert set(report.per_kind) == {kind for kind, *_ in soak.KINDS}, summary
        assert report.rss_growth_bytes < 32 * 2**20, summary
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status()):
            time.sleep(0.05)
        assert all(st.generating == 0 and st.queue_depth == 0 and st.loaded for st in server.state.pool.status())
        assert server.state.superseder.inflight == {}
        assert threading.active_count() <= threads_before
