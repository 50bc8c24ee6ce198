"""The worker's feed of cancellations: every worker process reads every one.

Where they come from: the orchestrator produces a
:class:`~fleet.messages.TaskCancelled` onto ``task.cancellations`` for each dispatched
attempt it stops waiting for (``orchestrator.cancellation``), in its transaction.

Why one topic read whole, without a consumer group: the attempt to stop runs on
whichever worker of its capability's pool took its task record, and nobody knows which.
A group would hand each cancellation to one member only, so every worker process reads
every partition itself (``assign``, never ``subscribe``; nothing is committed). A topic
per capability (``tasks.<capability>.cancel``) would spare a worker the other pools'
cancellations, but its name would collide with the task topic of a capability called
``<capability>.cancel``, and cancellations are rare next to tasks: one small topic is
simpler to run (one partition, one hour of retention). Read ``read_committed``, like every
consumer here: the cancellation of a decision the orchestrator rolled back never shows.

Where a worker starts reading: ``LOOKBACK_S`` before its start (or at the end, when the
topic holds nothing newer). Cancellations of attempts that started after it are what
matters most, but a task cancelled while it waited in its queue, or redelivered after
its worker died, is taken up later: the registry remembers those and never starts them
(``workers.cancellation``). Past its deadline a task is not run anyway, and steps time
out after 5 minutes unless their spec says otherwise: 10 minutes covers that twice.
"""

from __future__ import annotations

import time
import uuid

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fleet.codec import Codec
from fleet.errors import BrokerError, DecodeError
from fleet.kafka import KafkaClients, retry_transient, watermarks
from fleet.kafka.follow import TopicReader
from fleet.messages import TaskCancelled
from fleet.topology import Topics
from workers.cancellation import CancelRegistry

log = structlog.get_logger()

LOOKBACK_S = 600.0
BATCH = 500  # records per poll: the worker's loop never waits on this feed


class CancellationFeed:
    """Reads ``task.cancellations`` and signals matching attempts through ``registry``."""

    def __init__(
        self,
        clients: KafkaClients,
        topics: Topics,
        codec: Codec,
        registry: CancelRegistry,
        *,
        lookback_s: float = LOOKBACK_S,
    ) -> None:
        self.codec = codec
        self.registry = registry
        self.topic = topics.cancellations
        # A group id the client needs, never joined: assign() only, no commits.
        group = f"{topics.prefix}workers.cancellations.{uuid.uuid4().hex}"
        starts = _starts(clients, group, self.topic, lookback_s)
        self.reader = TopicReader(
            lambda: clients.consumer(group), clients.admin, self.topic, starts
        )

    def poll(self) -> int:
        """Apply the cancellations that arrived (without waiting); how many records came."""
        records = self.reader.consume(BATCH, timeout=0)
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("cancellation feed error; librdkafka retries", error=str(error))
                continue
            try:
                cancelled = self.codec.decode(record.value(), TaskCancelled, record=record)
            except DecodeError as exc:
                # Not dead-lettered: every worker reads this topic, so every worker would.
                log.warning("undecodable cancellation skipped", reason=exc.reason)
                continue
            key = (cancelled.task_id, cancelled.attempt)
            if self.registry.cancel(key, f"{cancelled.reason}: {cancelled.detail}"):
                log.info(
                    "cancelling a running task",
                    task_id=cancelled.task_id,
                    attempt=cancelled.attempt,
                    reason=cancelled.reason,
                    detail=cancelled.detail,
                )
        return len(records)

    def close(self) -> None:
        self.reader.close()


def _starts(clients: KafkaClients, group: str, topic: str, lookback_s: float) -> dict[int, int]:
    """Per partition, the first offset written at most ``lookback_s`` ago, else the end.

    Offsets are asked explicitly rather than OFFSET_END, which librdkafka resolves lazily:
    a cancellation produced between start-up and that resolution would be missed. A
    topic the worker has just created may have no leader yet: that is waited out."""
    probe, admin = clients.consumer(group), clients.admin()

    def ask() -> dict[int, int]:
        metadata = admin.list_topics(topic=topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)  # UNKNOWN_TOPIC_OR_PART while it propagates
        since_ms = int((time.time() - lookback_s) * 1000)
        asked = [TopicPartition(topic, p, since_ms) for p in sorted(metadata.partitions)]
        starts = {}
        for tp in probe.offsets_for_times(asked, timeout=10):
            if tp.error is not None:
                raise KafkaException(tp.error)
            end = tp.offset < 0  # nothing written since: start at the end
            starts[tp.partition] = watermarks(probe, topic, tp.partition)[1] if end else tp.offset
        return starts

    try:
        return retry_transient(ask)
    except (KafkaException, KeyError) as exc:
        raise BrokerError(f"cannot read {topic}: {exc}; run `fleet topics apply`") from exc
    finally:
        probe.close()
