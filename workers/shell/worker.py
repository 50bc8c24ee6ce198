"""The Kafka loop of a worker pool process: consume tasks, produce results, commit.

One consumer per capability (its own group), so a slow capability only slows its own
queue. Records of a partition run concurrently, up to ``concurrency`` per process; an
:class:`~workers.offsets.OffsetTracker` commits only offsets below which every record's
result is durably produced (ack after the effect). A full process keeps a bounded window
of records, then pauses its partitions while it keeps polling: memory follows in-flight
work, not topic size, and ``max.poll.interval.ms`` is never exceeded. The loop runs in
the calling thread; handlers run on :class:`~workers.bridge.HandlerLoop`, the only
bridge between this thread and asyncio. Cancellations of attempts come from their own
feed (:mod:`workers.shell.cancellations`), read in the same loop without waiting.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from fleet.app import App
from fleet.cancellation import Cancellation
from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError, DecodeError
from fleet.kafka import TRACEPARENT, DeliveryCallback, KafkaClients, header, headers_for, produce
from fleet.kafka.deadletter import DeadLetters
from fleet.messages import TaskAssigned
from fleet.settings import Settings
from fleet.topology import Topics
from fleet.tracing import child_of
from workers.bridge import HandlerLoop, HandlerThreads
from workers.cancellation import CancelRegistry, Key
from workers.execute import Outcome, handle_task
from workers.offsets import OffsetTracker, PartitionOffsets
from workers.shell.cancellations import CancellationFeed
from workers.shell.metrics import WorkerMetrics

log = structlog.get_logger()

COMMIT_INTERVAL_S = 1.0
DELIVERY_ATTEMPTS = 3  # produce tries per result before the process gives up
IDLE_WAIT_MAX_S = 0.02  # longest sleep of an idle loop: bounds pick-up latency
HOUSEKEEPING_S = 1.0  # when full, poll this often: rebalances, max.poll.interval.ms


@dataclass
class _Source:
    """The consumer of one capability's task topic and its offsets."""

    capability: str
    topic: str
    consumer: Consumer
    tracker: OffsetTracker = field(default_factory=OffsetTracker)

    def commit(self, commits: dict[tuple[str, int], int], *, asynchronous: bool) -> None:
        if not commits:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in commits.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed; those records will be redelivered", error=str(exc))


@dataclass(eq=False)
class _Work:
    """One record, from consumption until its effect (result or dead letter) is durable."""

    source: _Source
    partition: PartitionOffsets  # of the assignment it was taken under
    offset: int
    future: Future[Outcome] | None = None
    emit: Callable[[DeliveryCallback], None] | None = None  # produces the effect
    tries: int = 0
    attempt: Key | None = None  # (task_id, attempt) once decoded
    cancellation: Cancellation | None = None  # the running attempt's signal


class Worker:
    def __init__(
        self,
        settings: Settings,
        app: App,
        clients: KafkaClients,
        metrics: WorkerMetrics,
        *,
        concurrency: int,
        grace_s: float,
        worker_id: str,
    ) -> None:
        self.app, self.metrics, self.worker_id = app, metrics, worker_id
        self.concurrency, self.grace_s = concurrency, grace_s
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.producer: Producer = clients.producer()
        self.dead_letters = DeadLetters(self.producer, self.codec, self.topics, worker_id)
        self.sources = [
            _Source(
                cap,
                self.topics.tasks(cap),
                clients.task_consumer(f"{settings.topic_prefix}workers.{cap}"),
            )
            for cap in app.capabilities
        ]
        self._rotation = itertools.cycle(range(len(self.sources)))
        self.cancels = CancelRegistry()
        self.feed = CancellationFeed(clients, self.topics, self.codec, self.cancels)
        self._loop = HandlerLoop()
        self._threads = HandlerThreads(concurrency)
        self._completed: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._retries: list[_Work] = []
        self._failure: BrokerError | None = None
        self.in_flight = 0
        self._paused = self._draining = False
        # Records consumed while every slot was busy, started first when slots free up; at
        # most about ``concurrency`` of them, because then every partition is paused.
        self._held: deque[tuple[_Source, Message]] = deque()
        self._housekeeping_at = 0.0

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event, force: threading.Event) -> None:
        """Consume until ``stop``, then drain; raises BrokerError if an effect is undeliverable."""
        for source in self.sources:
            source.consumer.subscribe(
                [source.topic],
                on_assign=partial(self._on_assign, source),
                on_revoke=partial(self._on_revoke, source),
                on_lost=partial(self._on_lost, source),
            )
        log.info("worker consuming", capabilities=self.app.capabilities, worker_id=self.worker_id)
        try:
            next_commit = time.monotonic() + COMMIT_INTERVAL_S
            idle = 0.0
            while not stop.is_set():
                busy = self._poll() + self._serve() + self.feed.poll()
                if time.monotonic() >= next_commit:
                    for source in self.sources:
                        source.commit(source.tracker.take_commits(), asynchronous=True)
                    next_commit = time.monotonic() + COMMIT_INTERVAL_S
                # Back off while idle; a finished task wakes the loop at once. With nothing
                # running, wait in a task consumer: a sleep delayed each pick-up (up to
                # IDLE_WAIT_MAX_S). Capabilities take turns, so none waits longer than that.
                idle = 0.0 if busy else min(max(idle * 2, 0.001), IDLE_WAIT_MAX_S)
                if idle and not (self.in_flight or self._held or self._paused):
                    source = self.sources[next(self._rotation)]
                    for record in source.consumer.consume(1, timeout=idle / len(self.sources)):
                        self._take(source, record)
                elif idle and self._wakeup.wait(idle):
                    self._wakeup.clear()
            self._drain(force)
        finally:
            self._close()

    def _poll(self) -> int:
        """Start held records, then take new ones from every consumer, fairly."""
        taken = 0
        while self._held and self._free() > 0 and not self._draining:
            taken += self._take(*self._held.popleft())
        now = time.monotonic()
        if self._free() <= 0 and not self._draining and now < self._housekeeping_at:
            return taken  # full: new records wait in librdkafka's bounded queue
        # Polling even when full keeps the group membership and serves rebalances.
        self._housekeeping_at = now + HOUSEKEEPING_S
        first = next(self._rotation)
        for source in self.sources[first:] + self.sources[:first]:
            # When full, fill the held window at once: when slots free up, work is at hand.
            wanted = self._free() if self._free() > 0 else self.concurrency - len(self._held)
            for record in source.consumer.consume(num_messages=max(1, wanted), timeout=0):
                if self._draining:
                    continue  # never started, so never committed: redelivered
                if self._free() > 0:
                    taken += self._take(source, record)
                else:
                    self._held.append((source, record))
        self._update_pause()
        return taken

    def _free(self) -> int:
        return self.concurrency - self.in_flight

    def _take(self, source: _Source, record: Message) -> int:
        error = record.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error; librdkafka retries", error=str(error))
            return 0
        key, offset = (record.topic() or "", record.partition() or 0), record.offset() or 0
        partition = source.tracker.get(key)
        if partition is None or not partition.start(offset):
            return 0  # revoked meanwhile, or a redelivery this assignment already took
        work = _Work(source, partition, offset)
        try:
            task = self.codec.decode(record.value(), TaskAssigned, record=record)
            if task.capability != source.capability:
                raise DecodeError(
                    f"task for {task.capability!r} on the topic of {source.capability!r}",
                    record=record,
                )
        except DecodeError as exc:
            self.metrics.dead_letters.labels(source.capability).inc()
            work.emit = partial(self.dead_letters.send, record, exc)
            self._send(work)
            return 1
        self._start(work, task, header(record, TRACEPARENT))
        return 1

    def _start(self, work: _Work, task: TaskAssigned, traceparent: str | None) -> None:
        capability = self.app.get(work.source.capability)
        work.attempt = (task.task_id, task.attempt)
        work.cancellation = self.cancels.start(work.attempt)
        if work.cancellation is None:
            # Cancelled while it waited: nothing to run, nothing to produce, done.
            log.info("task cancelled before it started; skipped", task_id=task.task_id)
            self.metrics.cancelled.labels(capability.name, "before_start").inc()
            work.partition.finish(work.offset)
            return
        self.metrics.started.labels(capability.name).inc()
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        handling = handle_task(
            capability,
            task,
            worker_id=self.worker_id,
            threads=self._threads,
            traceparent=traceparent,
            on_thread_abandoned=self.metrics.abandoned_running.inc,
            on_thread_released=self.metrics.abandoned_running.dec,
            cancellation=work.cancellation,
        )
        work.future = self._loop.submit(handling, partial(self._finished, work))
        work.emit = partial(self._produce_result, work.future, traceparent)

    def _finished(self, work: _Work) -> None:
        # Runs in the handler loop's thread: hand over to the Kafka thread and wake it.
        self._completed.put(work)
        self._wakeup.set()

    def _serve(self) -> int:
        """Produce finished tasks' results, retry failed deliveries, serve delivery callbacks."""
        served = self.producer.poll(0)
        while not self._completed.empty():
            work = self._completed.get()
            if work.future is None or work.future.cancelled():
                continue  # abandoned at shutdown: never committed, so redelivered
            # The slot frees now; the offset only once the result is durable (_delivered).
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
            outcome = work.future.result()
            self.metrics.record(work.source.capability, outcome)
            if work.attempt is not None and work.cancellation is not None:
                self.cancels.end(work.attempt, work.cancellation)
            if outcome.cancelled:
                work.partition.finish(work.offset)  # no result to produce: the record is done
            else:
                self._send(work)
            served += 1
        retries, self._retries = self._retries, []
        for work in retries:
            self._send(work)
        if self._failure is not None:
            raise self._failure
        self._update_pause()
        return served + len(retries)

    # -- effects and acks -------------------------------------------------------------

    def _produce_result(
        self, future: Future[Outcome], traceparent: str | None, on_delivery: DeliveryCallback
    ) -> None:
        result = future.result().result
        produce(
            self.producer,
            self.topics.results,
            self.codec.encode(result),
            key=result.workflow_id,
            headers=headers_for(result, child_of(traceparent), result.attempt),
            on_delivery=on_delivery,
        )

    def _send(self, work: _Work) -> None:
        assert work.emit is not None
        try:
            work.emit(lambda err, _msg: self._delivered(work, err))
        except KafkaException as exc:  # refused locally, e.g. too large: a failed delivery
            self._delivered(work, exc.args[0])

    def _delivered(self, work: _Work, err: KafkaError | None) -> None:
        if err is None:
            # Only now does the record count as done: its offset may be committed.
            work.partition.finish(work.offset)
            return
        work.tries += 1
        if work.tries >= DELIVERY_ATTEMPTS:
            self._failure = BrokerError(
                f"could not deliver the effect of {work.source.topic} offset {work.offset} "
                f"after {work.tries} tries ({err}); exiting without committing it"
            )
            return
        log.warning("delivery failed; producing again", error=str(err), attempt=work.tries + 1)
        self._retries.append(work)

    # -- back-pressure and rebalances -------------------------------------------------

    def _update_pause(self) -> None:
        # Pausing drops librdkafka's fetched records and resuming fetches them again, so
        # pause only once full for a while (held records pile up) and resume when they
        # are all started: a busy pool does not pay a refetch per finished task.
        held = len(self._held)
        want = self._draining or (held > 0 if self._paused else held >= self.concurrency)
        if want == self._paused:
            return
        self._paused = want
        for source in self.sources:
            if assigned := source.consumer.assignment():
                (source.consumer.pause if want else source.consumer.resume)(assigned)
        log.debug("paused all partitions" if want else "resumed", in_flight=self.in_flight)

    def _on_assign(self, source: _Source, consumer: Consumer, parts: list[TopicPartition]) -> None:
        source.tracker.assign((p.topic, p.partition) for p in parts)
        consumer.incremental_assign(parts)
        if self._paused:
            consumer.pause(parts)  # full or draining: new partitions wait like the others
        log.info("partitions assigned", topic=source.topic, partitions=[p.partition for p in parts])

    def _on_revoke(self, source: _Source, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Commit what is finished; tasks still running for these partitions produce their
        # results anyway (the new owner may run them again; duplicates are dropped).
        self.producer.poll(0)
        commits = source.tracker.revoke(self._forget(source, parts))
        source.commit(commits, asynchronous=False)
        log.info("partitions revoked", topic=source.topic, partitions=[p.partition for p in parts])

    def _on_lost(self, source: _Source, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        source.tracker.revoke(self._forget(source, parts))
        log.warning("partitions lost; their uncommitted records go to another worker")

    def _forget(self, source: _Source, parts: list[TopicPartition]) -> set[tuple[str, int]]:
        # Held records of a revoked partition must not start under a later assignment of
        # it: the new owner (maybe us again) resumes from the committed offset.
        keys = {(p.topic, p.partition) for p in parts}
        self._held = deque(
            (s, r)
            for s, r in self._held
            if s is not source or (r.topic(), r.partition()) not in keys
        )
        return keys

    # -- shutdown ---------------------------------------------------------------------

    def _drain(self, force: threading.Event) -> None:
        self._draining = True
        self._update_pause()
        log.info(
            "draining: no new work; waiting for the tasks in flight",
            in_flight=self.in_flight,
            held=len(self._held),
            grace_s=self.grace_s,
        )
        self._held.clear()  # never started, so never committed: they go to the next owner
        deadline = time.monotonic() + self.grace_s
        while self.in_flight and time.monotonic() < deadline and not force.is_set():
            busy = self._poll() + self._serve() + self.feed.poll()
            if not busy and self._wakeup.wait(IDLE_WAIT_MAX_S):
                self._wakeup.clear()
        self.producer.flush(10)
        self._serve()
        if self.in_flight:
            log.warning(
                "abandoning tasks still running after the grace period; they stay uncommitted "
                "and will be redelivered",
                abandoned=self.in_flight,
            )

    def _close(self) -> None:
        self.producer.flush(5)
        for source in self.sources:
            source.commit(source.tracker.revoke(source.tracker.keys), asynchronous=False)
        self._loop.close()
        self._threads.shutdown(wait=False)
        self.feed.close()
        for source in self.sources:
            try:
                source.consumer.close()  # leaves the group: partitions move at once
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", topic=source.topic, error=str(exc))
        log.info("worker left the group")
