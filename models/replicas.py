"""The replicas of one upstream model: who gets the next request, who is down, when to try again.

Least-outstanding-requests balancing (ties go to the replica picked longest ago, so a quiet
system round-robins). A replica that fails is taken out with exponential backoff; a health
thread probes it (GET /health, or GET /v1/models where the server has no /health) when its
backoff ends and brings it back. Idle healthy replicas that have a dedicated /health are
probed every `health_interval_s` too, so a dead one is noticed before a request lands on it.
Servers without one are left alone while healthy: llama-cpp-python answers /v1/models only by
taking its model lock, and a waiting request makes it interrupt the stream it is serving.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from models.errors import UpstreamUnavailable


@dataclass
class Replica:
    """One base URL and what we know about it."""

    url: str
    healthy: bool = True
    outstanding: int = 0
    requests: int = 0  # requests sent to it, ever
    failures: int = 0  # consecutive failures (resets on success)
    failures_total: int = 0
    down_until: float = 0.0  # monotonic time its backoff ends
    last_error: str | None = None
    last_picked: int = 0  # pick sequence number, for round-robin among equals
    health_path: str | None = None  # the health endpoint that worked last time
    routine_probes: bool = True  # False once it turned out to have no dedicated /health

    def snapshot(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "failures_total": self.failures_total,
            "last_error": self.last_error,
        }


class ReplicaSet:
    """Picks replicas for requests and keeps their health up to date (thread-safe)."""

    def __init__(
        self,
        model_id: str,
        urls: list[str],
        client: httpx.Client,
        *,
        health_paths: tuple[str, ...] = ("/health", "/v1/models"),
        health_timeout_s: float = 2.0,
        health_interval_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        background_health: bool = True,
        slots_per_replica: int | None = None,
    ) -> None:
        """`background_health=False` leaves probing to acquire() alone (callers driving the clock)."""
        if not urls:
            raise ValueError(f"upstream model {model_id!r} has no replica urls")
        self.model_id = model_id
        self.replicas = [Replica(url=url.rstrip("/")) for url in urls]
        self._client = client
        self._health_paths = health_paths
        self._health_timeout_s = health_timeout_s
        self._health_interval_s = health_interval_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._slots = slots_per_replica  # None: no limit per replica
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._seq = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._health_loop, name=f"health-{model_id}", daemon=True)
        if background_health:
            self._thread.start()

    # --- picking -------------------------------------------------------------------------------

    def acquire(
        self,
        exclude: tuple[Replica, ...] | list[Replica] = (),
        *,
        cancel: threading.Event | None = None,
        wait_s: float = 0.0,
    ) -> Replica | None:
        """The healthy replica with the fewest requests in flight; counts the request against it.

        Replicas whose backoff has ended are probed right here when no healthy one is left, so a
        recovered upstream serves the very next request. When every healthy replica is at its
        slot limit, waits up to `wait_s` for one to free up (None if `cancel` is set meanwhile).
        Raises UpstreamUnavailable when no replica can take the request.
        """
        deadline = time.monotonic() + wait_s
        while True:
            replica, all_full = self._pick(exclude)
            if replica is None and not all_full:
                now = self._clock()
                for candidate in self.replicas:
                    if candidate in exclude or candidate.healthy or candidate.down_until > now:
                        continue
                    if self.probe(candidate):
                        break
                replica, all_full = self._pick(exclude)
            if replica is not None:
                return replica
            if not all_full:
                raise UpstreamUnavailable(self._unavailable_message(exclude))
            if cancel is not None and cancel.is_set():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamUnavailable(
                    f"every replica of model {self.model_id!r} is busy ({self._slots} generations each) "
                    f"and none freed up within {wait_s:g}s"
                )
            with self._slot_free:
                self._slot_free.wait(min(0.1, remaining))

    def _pick(self, exclude) -> tuple[Replica | None, bool]:
        """(the replica to use, or None; whether healthy candidates exist but all are full)."""
        with self._lock:
            candidates = [r for r in self.replicas if r.healthy and r not in exclude]
            free = [r for r in candidates if self._slots is None or r.outstanding < self._slots]
            if not free:
                return None, bool(candidates)
            replica = min(free, key=lambda r: (r.outstanding, r.last_picked))
            self._seq += 1
            replica.last_picked = self._seq
            replica.outstanding += 1
            replica.requests += 1
            return replica, False

    def release(self, replica: Replica) -> None:
        with self._slot_free:
            replica.outstanding -= 1
            self._slot_free.notify()

    def _unavailable_message(self, exclude) -> str:
        parts = []
        for replica in self.replicas:
            reason = replica.last_error or ("unhealthy" if not replica.healthy else "failed for this request")
            parts.append(f"{replica.url}: {reason}")
        n = len(self.replicas)
        return f"all {n} replica{'s' if n > 1 else ''} of model {self.model_id!r} are unavailable ({'; '.join(parts)})"

    # --- outcomes ------------------------------------------------------------------------------

    def mark_failed(self, replica: Replica, error: str) -> None:
        """Take the replica out until its backoff ends (doubling with each consecutive failure)."""
        with self._lock:
            replica.failures += 1
            replica.failures_total += 1
            replica.last_error = error
            replica.healthy = False
            delay = min(self._backoff_base_s * 2 ** (replica.failures - 1), self._backoff_max_s)
            replica.down_until = self._clock() + delay
        self._wake.set()

    def mark_ok(self, replica: Replica) -> None:
        with self._lock:
            replica.failures = 0
            replica.healthy = True
            replica.last_error = None

    # --- health --------------------------------------------------------------------------------

    def probe(self, replica: Replica) -> bool:
        """One health check; updates the replica and says whether it is serving.

        A healthy replica whose check merely times out stays in: a busy server may answer its
        health check late, and that is not a failure (requests that time out still take it
        out). A replica already down needs a real answer to come back.
        """
        error, timed_out = self._check(replica, self._health_paths)
        if error is None:
            self.mark_ok(replica)
            return True
        if timed_out and replica.healthy:
            return True
        self.mark_failed(replica, error)
        return False

    def _routine_probe(self, replica: Replica) -> None:
        """The periodic check of a healthy replica, on its dedicated health endpoint only."""
        path = self._health_paths[0]
        try:
            response = self._client.get(replica.url + path, timeout=self._health_timeout_s)
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            return  # busy, not dead
        except httpx.HTTPError as exc:
            self.mark_failed(replica, f"health check failed: {type(exc).__name__}: {exc}")
            return
        if response.status_code in (404, 405):
            replica.routine_probes = False  # no dedicated endpoint: requests and recovery probes only
        elif response.status_code != 200:
            self.mark_failed(replica, f"health check {path} answered {response.status_code}")

    def _check(self, replica: Replica, paths: tuple[str, ...]) -> tuple[str | None, bool]:
        """(None, False) when healthy, else (why, whether it was only a timeout)."""
        if replica.health_path in paths:  # the path that answered before goes first
            paths = (replica.health_path,) + tuple(p for p in paths if p != replica.health_path)
        for path in paths:
            try:
                response = self._client.get(replica.url + path, timeout=self._health_timeout_s)
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
                return f"health check {path} timed out ({type(exc).__name__})", True
            except httpx.HTTPError as exc:
                return f"health check failed: {type(exc).__name__}: {exc}", False
            if response.status_code == 200:
                replica.health_path = path
                return None, False
            if response.status_code in (404, 405) and path != paths[-1]:
                continue  # this server has no such endpoint: try the next one
            return f"health check {path} answered {response.status_code}", False
        return "no health endpoint answered", False

    def _health_loop(self) -> None:
        next_routine = self._clock() + self._health_interval_s
        while not self._stop.is_set():
            now = self._clock()
            due = [r for r in self.replicas if not r.healthy and r.down_until <= now]
            if now >= next_routine:
                routine = [r for r in self.replicas if r.healthy and r.outstanding == 0 and r.routine_probes]
                next_routine = now + self._health_interval_s
            else:
                routine = []
            for replica in due:
                if self._stop.is_set():
                    return
                self.probe(replica)
            for replica in routine:
                if self._stop.is_set():
                    return
                self._routine_probe(replica)
            now = self._clock()
            wake_at = [next_routine] + [r.down_until for r in self.replicas if not r.healthy]
            timeout = max(0.01, min(wake_at) - now)
            self._wake.wait(timeout)
            self._wake.clear()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [r.snapshot() for r in self.replicas]

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._health_timeout_s * len(self._health_paths) + 1)
