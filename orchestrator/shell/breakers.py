"""Circuit breakers across orchestrator instances: shared through Kafka, the same view on each.

Results of a capability arrive at whichever instance owns their workflow, so no
instance sees all of a capability's outcomes by itself. Each one therefore publishes
what it saw: at every commit, one :class:`~fleet.agent_messages.BreakerObservation` per
capability version with outcomes since the last commit (:class:`BreakerTally`), produced
in the same transaction as the work that saw them, so an aborted batch publishes
nothing and its replay publishes once. Every instance follows the observations topic
(:class:`BreakerFeed`, a thread like the agents' feed), from ``window + cool-down``
before its start, and feeds its :class:`~orchestrator.breaker.BreakerBoard` with them
all, its own included: the breakers are a pure function of the observations and the
time, so every instance holds the same ones, and a restarted one rebuilds them by
reading the topic again. The one local part is the half-open quota (per instance).

The engine asks through :class:`Gate` (the ``orchestrator.waiting.Agents`` protocol):
a capability is served when a live agent serves it (if routing to the living is on)
and its breaker admits one more task. A task refused waits like one without a live
agent, with the breaker's reason, and goes on when the breaker half-opens (the board's
generation moves) or fails with ``BreakerOpen`` after its ``no_agent_timeout_s``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable

import structlog
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from fleet.agent_messages import BreakerObservation
from fleet.codec import Codec, SchemaStore
from fleet.errors import DecodeError
from fleet.kafka import KafkaClients, headers_for, produce
from fleet.kafka.follow import TopicReader
from fleet.kafka.readback import ReadIncomplete, end_offsets, partitions_of
from fleet.settings import Settings
from fleet.topology import Topics
from orchestrator.breaker import BreakerBoard, BreakerPolicy, BreakerRow
from orchestrator.effects import FinishedTask
from orchestrator.waiting import Agents

log = structlog.get_logger()

POLL_S = 0.2
RETRY_S = 2.0
CATCH_UP_S = 30.0


def policy_of(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        failure_rate=settings.breaker_failure_rate,
        window_s=settings.breaker_window_s,
        min_calls=settings.breaker_min_calls,
        cooldown_s=settings.breaker_cooldown_s,
        half_open_calls=settings.breaker_half_open_calls,
    )


class BreakerTally:
    """Outcomes seen since the last commit, per capability version."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._counts: Counter[tuple[str, str, bool]] = Counter()

    def add(self, finished: Iterable[FinishedTask]) -> None:
        for done in finished:
            if done.counts_for_breaker:
                self._counts[(done.capability, done.version or "", done.succeeded)] += 1

    def clear(self) -> None:
        """The work these came from was voided: its replay counts them again."""
        self._counts.clear()

    def flush(self, producer: Producer, codec: Codec, topics: Topics, now_ms: int) -> int:
        """Produce one observation per capability version (in the open transaction);
        how many."""
        versions = sorted({(c, v) for c, v, _ in self._counts})
        for capability, version in versions:
            observation = BreakerObservation(
                capability=capability,
                version=version,
                instance=self.instance,
                ok=self._counts[(capability, version, True)],
                failed=self._counts[(capability, version, False)],
                at_ms=now_ms,
            )
            produce(
                producer,
                topics.breaker_observations,
                codec.encode(observation),
                key=capability,
                headers=headers_for(observation, None),
            )
        self._counts.clear()
        return len(versions)


class BreakerFeed:
    """The observations topic from ``lookback_s`` ago, then what arrives, into a board."""

    BATCH = 500

    def __init__(self, clients: KafkaClients, board: BreakerBoard, lookback_s: float) -> None:
        settings = clients.settings
        topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.topic = topics.breaker_observations
        self.board = board
        group = f"{topics.prefix}breakers.feed.{uuid.uuid4().hex}"  # never joined

        def open_consumer() -> Consumer:
            return clients.consumer(group)

        since_ms = int((time.time() - lookback_s) * 1000)
        partitions = partitions_of(clients, self.topic)
        self.starts = self._offsets_at(open_consumer, partitions, since_ms)
        # The end of each partition at start: the board is whole once read up to it.
        self.ends = end_offsets(clients, self.topic, partitions)
        self.reader = TopicReader(open_consumer, clients.admin, self.topic, self.starts)

    def _offsets_at(
        self, open_consumer: Callable[[], Consumer], partitions: list[int], since_ms: int
    ) -> dict[int, int]:
        consumer = open_consumer()
        try:
            wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions]
            found = consumer.offsets_for_times(wanted, timeout=10)
            starts = {}
            for tp in found:
                if tp.offset < 0:  # nothing at or after that time: from the end
                    _, high = consumer.get_watermark_offsets(tp, timeout=10)
                    starts[tp.partition] = high
                else:
                    starts[tp.partition] = tp.offset
            return starts
        finally:
            consumer.close()

    def behind(self) -> list[int]:
        """Partitions not yet read up to where they ended when this feed opened."""
        read = {p: max(self.starts.get(p, 0), self.reader.position(p)) for p in self.ends}
        return [p for p, end in self.ends.items() if read[p] < end]

    def poll(self, timeout_s: float, lock: threading.Lock) -> int:
        records = self.reader.consume(1, timeout=timeout_s)
        if records:
            records += self.reader.consume(self.BATCH - 1, timeout=0)
        observations = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("breaker feed error; librdkafka retries", error=str(error))
                continue
            try:
                observations.append(
                    self.codec.decode(record.value() or b"", BreakerObservation, record=record)
                )
            except DecodeError as exc:
                log.warning("undecodable breaker observation skipped", reason=exc.reason)
        with lock:
            for o in observations:
                self.board.observe(o.capability, o.version, o.at_ms, o.ok, o.failed)
        return len(records)

    def close(self) -> None:
        self.reader.close()


def read_board(clients: KafkaClients, policy: BreakerPolicy, timeout_s: float) -> BreakerBoard:
    """The board as the observations topic holds it now: what ``fleet breakers`` shows,
    computed as every orchestrator computes it (their half-open trial counts aside)."""
    board = BreakerBoard(policy)
    feed = BreakerFeed(clients, board, policy.window_s + policy.cooldown_s)
    try:
        deadline = time.monotonic() + timeout_s
        lock = threading.Lock()
        while behind := feed.behind():
            if time.monotonic() > deadline:
                raise ReadIncomplete(feed.topic, behind)
            feed.poll(POLL_S, lock)
    finally:
        feed.close()
    return board


class Breakers:
    """The board, kept up to date by a thread; asked by the loop's thread (locked)."""

    def __init__(
        self,
        policy: BreakerPolicy,
        open_feed: Callable[[BreakerBoard], BreakerFeed],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board = BreakerBoard(policy)
        self._open_feed = open_feed
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()

    @classmethod
    def of(cls, settings: Settings, clients: KafkaClients) -> Breakers:
        policy = policy_of(settings)
        lookback = policy.window_s + policy.cooldown_s
        return cls(policy, lambda board: BreakerFeed(clients, board, lookback))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def generation(self) -> int:
        with self._lock:
            return self.board.generation

    def admit(self, capability: str) -> bool:
        with self._lock:
            return self.board.admit(capability, self._now_ms())

    def why_not(self, capability: str) -> str:
        with self._lock:
            return self.board.why_not(capability, self._now_ms())

    def rows(self) -> list[BreakerRow]:
        with self._lock:
            return self.board.rows(self._now_ms())

    def start(self, catch_up_s: float = CATCH_UP_S) -> None:
        """Follow the observations; return once the board holds what the topic held (or
        after ``catch_up_s``, with a warning): an instance (re)started while a breaker is
        open must not send that capability work in the moment before it has read so."""
        self._thread = threading.Thread(target=self._follow, name="breaker-feed", daemon=True)
        self._thread.start()
        if not self.caught_up.wait(catch_up_s):
            log.warning("circuit breakers not caught up; starting with what is read so far")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        feed: BreakerFeed | None = None
        try:
            while not self._stop.is_set():
                try:
                    if feed is None:
                        feed = self._open_feed(self.board)
                    feed.poll(POLL_S, self._lock)
                    if not self.caught_up.is_set() and not feed.behind():
                        self.caught_up.set()
                    with self._lock:
                        before = self.board.generation
                        self.board.refresh(self._now_ms())  # open turns half-open with time
                        if self.board.generation != before:
                            log.info("circuit breakers changed", breakers=self._states())
                except Exception as exc:  # noqa: BLE001 - the breakers outlive a bad poll
                    log.warning("breaker feed failed; retrying", error=str(exc))
                    self._stop.wait(RETRY_S)
        finally:
            if feed is not None:
                feed.close()

    def _states(self) -> dict[str, str]:
        now = self._now_ms()
        return {r.capability: r.view.state.value for r in self.board.rows(now) if r.version == "*"}


class Gate:
    """What the engine asks: a live agent (when routing to the living) and a breaker
    that admits the task. Asked once per dispatch decision, so a half-open breaker's yes
    is a trial task sent."""

    def __init__(self, live: Agents, breakers: Breakers) -> None:
        self.live = live
        self.breakers = breakers

    @property
    def generation(self) -> int:
        # Both only grow, so their sum moves whenever either does.
        return self.live.generation + self.breakers.generation

    def serves(self, capability: str) -> bool:
        # The living first: a trial slot is not spent on a capability nobody would take.
        return self.live.serves(capability) and self.breakers.admit(capability)

    def why_not(self, capability: str) -> str:
        if not self.live.serves(capability):
            return self.live.why_not(capability)
        return self.breakers.why_not(capability)

    def cause(self, capability: str) -> str:
        if not self.live.serves(capability):
            return self.live.cause(capability)
        return "BreakerOpen" if self.breakers.why_not(capability) else "NoLiveAgent"
