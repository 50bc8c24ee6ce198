"""Circuit breakers per capability: stop sending work to a capability that keeps failing.

A breaker is a pure function of the outcomes it is fed and of the time it is asked at,
so every orchestrator instance that reads the same outcomes (the observations topic,
``orchestrator.shell.breakers``) holds the same breaker, and a restarted one rebuilds it
by reading them again.

* **Closed** (work flows). Outcomes land in one-second buckets over a sliding
  ``window_s``. Once the window holds at least ``min_calls`` outcomes and more than
  ``failure_rate`` of them failed, the breaker **opens** at that outcome's time.
* **Open** (no new tasks: they wait, ``orchestrator.waiting``). After ``cooldown_s`` the
  next admission finds it **half-open**.
* **Half-open**: at most ``half_open_calls`` trial tasks are admitted (by this
  instance: the quota is per instance, so n instances may send n times it). A failed
  outcome opens it again, from that outcome's time; ``half_open_calls`` successes close
  it, with an empty window.

Outcomes of tasks dispatched before the breaker opened may still arrive while it is open
(they are counted in the window but change nothing) or half-open (they count as trial
outcomes: a late failure reopens it, which errs on the side of caution).

Defaults follow common practice for service breakers (Resilience4j, Hystrix): 15 %
failures over 5 minutes with at least 20 calls, 30 s open, 3 trials.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

BUCKET_MS = 1000


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_rate: float = 0.15  # open above this share of failed calls in the window
    window_s: float = 300.0
    min_calls: int = 20  # no verdict on fewer calls than this
    cooldown_s: float = 30.0  # open this long before trials
    half_open_calls: int = 3  # trials admitted, and successes needed to close

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate < 1:
            raise ValueError(f"failure_rate must be between 0 and 1, got {self.failure_rate}")
        if self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError("window_s must be positive and cooldown_s not negative")
        if self.min_calls < 1 or self.half_open_calls < 1:
            raise ValueError("min_calls and half_open_calls must be at least 1")


@dataclass(frozen=True)
class BreakerView:
    """What ``fleet breakers`` shows of one breaker."""

    state: BreakerState
    calls: int  # in the window
    failed: int
    opened_at_ms: int | None  # of the current open (or half-open) period

    @property
    def failure_rate(self) -> float:
        return self.failed / self.calls if self.calls else 0.0


class Breaker:
    """One capability's breaker; see the module docstring for the rules."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._buckets: deque[list[int]] = deque()  # [bucket start ms, ok, failed], in order
        self._calls = 0
        self._failed = 0
        self._state = BreakerState.CLOSED
        self.opened_at_ms: int | None = None
        self._trials_admitted = 0
        self._trial_successes = 0

    def observe(self, at_ms: int, ok: int, failed: int) -> bool:
        """Outcomes (``ok`` succeeded, ``failed`` failed) at ``at_ms``; True if they
        changed the state (the cool-down's end before them is not counted as theirs)."""
        if ok < 0 or failed < 0 or ok + failed == 0:
            return False
        # Time first: outcomes seen after the cool-down are trials, whether or not anyone
        # asked in between (a reader replaying the topic asks nothing).
        self._cool(at_ms)
        before = self._state
        self._add(at_ms, ok, failed)
        if self._state is BreakerState.CLOSED:
            self._slide(at_ms)
            rate = self._failed / self._calls
            if self._calls >= self.policy.min_calls and rate > self.policy.failure_rate:
                self._open(at_ms)
        elif self._state is BreakerState.HALF_OPEN:
            if failed:
                self._open(at_ms)
            else:
                self._trial_successes += ok
                if self._trial_successes >= self.policy.half_open_calls:
                    self._close()
        return self._state is not before

    def admit(self, now_ms: int) -> bool:
        """May one more task be dispatched now? In half-open, a yes takes a trial slot."""
        self._cool(now_ms)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return False
        if self._trials_admitted < self.policy.half_open_calls:
            self._trials_admitted += 1
            return True
        return False

    def state(self, now_ms: int) -> BreakerState:
        """The state at ``now_ms`` (open turns half-open once the cool-down is over)."""
        self._cool(now_ms)
        return self._state

    def view(self, now_ms: int) -> BreakerView:
        state = self.state(now_ms)
        self._slide(now_ms)
        return BreakerView(state, self._calls, self._failed, self.opened_at_ms)

    def reopens_at_ms(self) -> int | None:
        """When an open breaker turns half-open (None unless open)."""
        if self._state is not BreakerState.OPEN or self.opened_at_ms is None:
            return None
        return self.opened_at_ms + round(self.policy.cooldown_s * 1000)

    # -- inside ------------------------------------------------------------------------

    def _add(self, at_ms: int, ok: int, failed: int) -> None:
        start = at_ms - at_ms % BUCKET_MS
        if self._buckets and self._buckets[-1][0] >= start:
            # Same second, or an observation from an instance a little behind: the
            # newest bucket takes it (the window is approximate to a bucket anyway).
            self._buckets[-1][1] += ok
            self._buckets[-1][2] += failed
        else:
            self._buckets.append([start, ok, failed])
        self._calls += ok + failed
        self._failed += failed

    def _slide(self, now_ms: int) -> None:
        horizon = now_ms - round(self.policy.window_s * 1000)
        while self._buckets and self._buckets[0][0] + BUCKET_MS <= horizon:
            _, ok, failed = self._buckets.popleft()
            self._calls -= ok + failed
            self._failed -= failed

    def _cool(self, now_ms: int) -> None:
        reopen = self.reopens_at_ms()
        if reopen is not None and now_ms >= reopen:
            self._state = BreakerState.HALF_OPEN
            self._trials_admitted = 0
            self._trial_successes = 0

    def _open(self, at_ms: int) -> None:
        self._state = BreakerState.OPEN
        self.opened_at_ms = at_ms

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self.opened_at_ms = None
        self._buckets.clear()
        self._calls = self._failed = 0


@dataclass(frozen=True)
class BreakerRow:
    capability: str
    version: str  # "*": the capability's own breaker, the one that gates dispatch
    view: BreakerView


class BreakerBoard:
    """Every capability's breaker, fed with observations from every instance.

    Dispatch is gated per capability: a task goes to its capability's topic and any
    version may take it, so a version cannot be stopped alone until versions are routed
    apart (issue 12 item 4). Each version's outcomes are kept as a breaker of their own
    too, so ``fleet breakers`` shows which version is failing."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._gates: dict[str, Breaker] = {}
        self._versions: dict[tuple[str, str], Breaker] = {}
        self._states: dict[str, BreakerState] = {}
        self.generation = 0  # moves whenever a gate's state changed

    def observe(self, capability: str, version: str, at_ms: int, ok: int, failed: int) -> None:
        gate = self._gates.setdefault(capability, Breaker(self.policy))
        gate.observe(at_ms, ok, failed)
        per_version = self._versions.setdefault((capability, version), Breaker(self.policy))
        per_version.observe(at_ms, ok, failed)
        self._note(capability, gate.state(at_ms))

    def admit(self, capability: str, now_ms: int) -> bool:
        gate = self._gates.get(capability)
        if gate is None:
            return True
        admitted = gate.admit(now_ms)
        self._note(capability, gate.state(now_ms))
        return admitted

    def refresh(self, now_ms: int) -> None:
        """Let time act (open turns half-open after the cool-down); the generation moves
        if a state changed, so waiting tasks are looked at again."""
        for capability, gate in self._gates.items():
            self._note(capability, gate.state(now_ms))

    def why_not(self, capability: str, now_ms: int) -> str:
        gate = self._gates.get(capability)
        if gate is None:
            return ""
        view = gate.view(now_ms)
        if view.state is BreakerState.CLOSED:
            return ""
        if view.state is BreakerState.HALF_OPEN:
            return (
                f"circuit breaker of {capability} half-open: its "
                f"{self.policy.half_open_calls} trial tasks are out"
            )
        reopen = gate.reopens_at_ms()
        return (
            f"circuit breaker of {capability} open: {view.failed} of {view.calls} calls "
            f"failed within {self.policy.window_s:g} s; trials from "
            f"{(reopen or now_ms) // 1000} (epoch s)"
        )

    def rows(self, now_ms: int) -> list[BreakerRow]:
        rows = [BreakerRow(c, "*", b.view(now_ms)) for c, b in self._gates.items()]
        rows += [BreakerRow(c, v, b.view(now_ms)) for (c, v), b in self._versions.items()]
        return sorted(rows, key=lambda r: (r.capability, r.version != "*", r.version))

    def _note(self, capability: str, state: BreakerState) -> None:
        if self._states.get(capability, BreakerState.CLOSED) is not state:
            self._states[capability] = state
            self.generation += 1
