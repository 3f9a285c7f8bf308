"""Soak: mixed requests in every dialect at the concurrency the pool allows, for minutes.

Checks that nothing is lost or mixed up and that memory stays flat:
- every request gets a complete answer (200, a finished stream: [DONE], stop: true, done: true);
- each answer belongs to its request: decoding is greedy (temperature 0, fixed seed) and every
  prompt is unique, so each response must equal the response the same request got when it ran
  alone before the soak (and come from the same model);
- resident memory (RSS of the process serving) does not grow: the median of the last third of
  the samples against the median of the first third, after a warm-up.

    .venv/bin/python bench/soak.py --duration 300          # several minutes (default 300 s)

Starts its own router on 127.0.0.1 (port 0) over two tiny generated GGUF models (tests/tiny_gguf.py),
one worker slot each. Results: a table on stdout and bench/results/soak.json. The normal test run
uses a 20-second version (tests/test_reliability_soak.py).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like our packages (bench/classifier.py): the project root comes first.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MAX_TOKENS = 12


@dataclass(frozen=True)
class Answer:
    """What a request produced: the model that answered and its whole text."""

    model: str
    text: str


def _sse_events(r: httpx.Response) -> list[str]:
    return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def openai_chat(client: httpx.Client, i: int, model: str, stream: bool) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": f"Request {i}: tell me about item {i * 7919 % 1000}."}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 1, "stream": stream}
    if not stream:
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        data = r.json()
        assert data["choices"][0]["finish_reason"] in ("stop", "length"), data
        return Answer(r.headers["x-route-model"], data["choices"][0]["message"]["content"])
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        events = _sse_events(r)
        model = r.headers["x-route-model"]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"), chunks[-1]
    return Answer(model, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))


def openai_completion(client: httpx.Client, i: int, model: str, fim: bool) -> Answer:
    body = {"model": model, "prompt": f"# request {i}\ndef f_{i}(x):\n    return ", "max_tokens": MAX_TOKENS,
            "temperature": 0, "seed": 1}
    if fim:
        body["suffix"] = f"\n\nprint(f_{i}({i}))\n"
    r = client.post("/v1/completions", json=body)
    r.raise_for_status()
    return Answer(r.headers["x-route-model"], r.json()["choices"][0]["text"])


def llama_infill(client: httpx.Client, i: int, model: str, stream: bool) -> Answer:
    body = {"input_prefix": f"def g_{i}(y):\n", "input_suffix": f"\n    return y * {i}\n", "prompt": "    z = ",
            "input_extra": [{"text": f"CONST_{i} = {i}\n", "filename": f"c{i}.py"}], "n_predict": MAX_TOKENS,
            "temperature": 0, "seed": 1, "model": model, "t_max_predict_ms": None}
    r = client.post("/infill", json=body)
    r.raise_for_status()
    data = r.json()
    assert data["stop"] is True, data
    return Answer(r.headers["x-route-model"], data["content"])


def llama_completion_stream(client: httpx.Client, i: int, model: str, stream: bool) -> Answer:
    body = {"prompt": f"<|fim_prefix|>v{i} = <|fim_suffix|>\nprint(v{i})<|fim_middle|>", "n_predict": MAX_TOKENS,
            "temperature": 0, "seed": 1, "stream": True, "model": model}
    with client.stream("POST", "/completion", json=body) as r:
        r.raise_for_status()
        events = [json.loads(e) for e in _sse_events(r)]
        model_id = r.headers["x-route-model"]
    assert events and events[-1]["stop"] is True, events[-1:]
    return Answer(model_id, "".join(e["content"] for e in events[:-1]))


def ollama_generate(client: httpx.Client, i: int, model: str, stream: bool) -> Answer:
    body = {"model": model, "prompt": f"Request {i}: name a colour and the number {i}.", "stream": stream,
            "options": {"num_predict": MAX_TOKENS, "temperature": 0, "seed": 1}}
    if not stream:
        r = client.post("/api/generate", json=body)
        r.raise_for_status()
        return Answer(r.headers["x-route-model"], r.json()["response"])
    with client.stream("POST", "/api/generate", json=body) as r:
        r.raise_for_status()
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
        model_id = r.headers["x-route-model"]
    assert lines[-1]["done"] is True, lines[-1:]
    return Answer(model_id, "".join(x["response"] for x in lines))


def ollama_chat(client: httpx.Client, i: int, model: str, stream: bool) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": f"Earlier {i}"},
                                         {"role": "assistant", "content": "ok"},
                                         {"role": "user", "content": f"Now request {i}, please."}],
            "stream": False, "options": {"num_predict": MAX_TOKENS, "temperature": 0, "seed": 1}}
    r = client.post("/api/chat", json=body)
    r.raise_for_status()
    assert r.json()["done"] is True
    return Answer(r.headers["x-route-model"], r.json()["message"]["content"])


# (name, function, model asked for, stream flag): both models, every dialect, streaming and not.
KINDS: list[tuple[str, Callable[..., Answer], str, bool]] = [
    ("openai chat", openai_chat, "chat", False),
    ("openai chat stream", openai_chat, "code_edit", True),
    ("openai completion", openai_completion, "instruct", False),
    ("openai fim", openai_completion, "fim", True),
    ("llama.cpp infill", llama_infill, "fim", False),
    ("llama.cpp completion stream", llama_completion_stream, "code_edit", True),
    ("ollama generate stream", ollama_generate, "chat", True),
    ("ollama generate", ollama_generate, "code_edit", False),
    ("ollama chat", ollama_chat, "chat", False),
]


def send(client: httpx.Client, request_id: int) -> Answer:
    name, fn, model, flag = KINDS[request_id % len(KINDS)]
    return fn(client, request_id, model, flag)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class SoakReport:
    requests: int = 0
    per_kind: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # errors, timeouts, unfinished streams
    mixed: list[str] = field(default_factory=list)  # an answer that is not its request's
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    seconds: float = 0.0
    concurrency: int = 0
    distinct_requests: int = 0

    @property
    def rss_growth_bytes(self) -> int:
        samples = [b for _, b in self.rss_samples]
        if len(samples) < 6:
            return 0
        third = len(samples) // 3
        return int(statistics.median(samples[-third:]) - statistics.median(samples[:third]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1), "concurrency": self.concurrency, "requests": self.requests,
            "distinct_requests": self.distinct_requests, "per_kind": self.per_kind,
            "lost": len(self.lost), "mixed": len(self.mixed), "lost_examples": self.lost[:10],
            "mixed_examples": self.mixed[:10], "rss_growth_bytes": self.rss_growth_bytes,
            "rss_first_mb": round(self.rss_samples[0][1] / 2**20, 1) if self.rss_samples else None,
            "rss_last_mb": round(self.rss_samples[-1][1] / 2**20, 1) if self.rss_samples else None,
            "rss_samples": [(round(t, 1), b) for t, b in self.rss_samples],
        }


def soak(base_url: str, *, duration_s: float, concurrency: int, distinct: int = 72, seed: int = 0,
         sample_every_s: float = 1.0) -> SoakReport:
    """References first (each request alone), then `concurrency` clients for `duration_s`."""
    report = SoakReport(concurrency=concurrency, distinct_requests=distinct)
    with httpx.Client(base_url=base_url, timeout=120, headers={"user-agent": "soak-reference"}) as client:
        references = {i: send(client, i) for i in range(distinct)}
        for i in range(distinct):  # the reference itself must be reproducible
            again = send(client, i)
            if again != references[i]:
                report.mixed.append(f"request {i} is not deterministic alone: {references[i]} vs {again}")
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    rng = random.Random(seed)
    order = [rng.randrange(distinct) for _ in range(100_000)]
    cursor = iter(range(len(order)))

    def client_loop(worker: int) -> None:
        # one user agent per client: distinct editors, so FIM superseding never cancels another's request
        with httpx.Client(base_url=base_url, timeout=120, headers={"user-agent": f"soak-client-{worker}"}) as client:
            while time.monotonic() < stop_at:
                with lock:
                    request_id = order[next(cursor) % len(order)]
                kind = KINDS[request_id % len(KINDS)][0]
                try:
                    answer = send(client, request_id)
                except Exception as exc:  # noqa: BLE001 - every failure is a lost response, reported
                    with lock:
                        report.lost.append(f"{kind} #{request_id}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                with lock:
                    report.requests += 1
                    report.per_kind[kind] = report.per_kind.get(kind, 0) + 1
                    if answer != references[request_id]:
                        report.mixed.append(f"{kind} #{request_id}: got {answer!r:.200} expected "
                                            f"{references[request_id]!r:.200}")

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(w,), name=f"soak-{w}") for w in range(concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        report.rss_samples.append((time.monotonic() - started, rss_bytes()))
        time.sleep(sample_every_s)
    for t in threads:
        t.join()
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def tiny_server(tmp: Path, queue_size: int = 16) -> Iterator[Any]:
    """A live router over two tiny GGUF models (one FIM-capable), isolated from the user's config."""
    from server_harness import isolated_env, live_server
    from tiny_gguf import write_tiny_gguf

    from models.catalog import catalog_from_files
    from router.app import create_app
    from router.settings import Settings

    coder = write_tiny_gguf(tmp / "soak-coder.gguf", fim_family="qwen")
    chat = write_tiny_gguf(tmp / "soak-chat.gguf", fim_family=None, seed=1)
    with isolated_env(tmp):
        settings = Settings(n_threads=1, n_threads_batch=1, idle_ttl_s=0, queue_size=queue_size)
        catalog = catalog_from_files({"code_edit": coder, "fim": coder, "chat": chat, "instruct": chat}, n_ctx=512)
        with live_server(create_app(settings, catalog=catalog)) as server:
            yield server


def pool_concurrency(server: Any) -> int:
    """Generations the pool runs at once: one per worker slot of every model."""
    pool = server.state.pool
    slots = 0
    for st in pool.status():
        backend = pool.backend(st.id)
        slots += max(1, int(getattr(backend, "parallel", 1) or 1)) if backend is not None else 1
    return slots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of soak after the references.")
    parser.add_argument("--concurrency", type=int, default=0, help="Clients at once (0: twice the pool's slots).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, tiny_server(Path(tmp)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:  # load both models
            client.post("/api/generate", json={"model": "chat", "prompt": ""})
            client.post("/api/generate", json={"model": "code_edit", "prompt": ""})
        concurrency = args.concurrency or 2 * pool_concurrency(server)
        report = soak(server.url, duration_s=args.duration, concurrency=concurrency, seed=args.seed)
        idle = all(st.generating == 0 and st.queue_depth == 0 for st in server.state.pool.status())
    data = {**report.as_dict(), "pool_idle_after": idle}
    print(f"{'kind':<30} {'requests':>9}")
    for kind, n in sorted(report.per_kind.items()):
        print(f"{kind:<30} {n:>9}")
    print(f"{'total':<30} {report.requests:>9}  in {report.seconds:.0f} s at concurrency {concurrency}")
    print(f"lost {len(report.lost)}, mixed up {len(report.mixed)}, RSS {data['rss_first_mb']} -> {data['rss_last_mb']} MB "
          f"(median growth {report.rss_growth_bytes / 2**20:.1f} MB), pool idle after: {idle}")
    for line in (report.lost + report.mixed)[:10]:
        print("  ", line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if not report.lost and not report.mixed and idle else 1


if __name__ == "__main__":
    sys.exit(main())
