"""Kafka's murmur2 partitioner: the Java client's own test values, and librdkafka's choice."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Message, Producer

from fleet.kafka.partitioner import murmur2, partition_for

pytestmark = pytest.mark.unit

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "hashed"), JAVA.items(), ids=lambda v: str(v)[:12])
def test_murmur2_matches_the_java_client(key: bytes, hashed: int) -> None:
    assert murmur2(key) == hashed


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert partition_for(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6
    assert partition_for("21", 6) == partition_for(b"21", 6)
    assert partition_for("", 1) == 0
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for("x", 0)


def test_librdkafka_puts_each_key_where_partition_for_says() -> None:
    """librdkafka's in-process mock cluster: the partitions our producers really choose."""
    quiet = logging.getLogger("test.partitioner")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    producer = Producer(
        {"test.mock.num.brokers": 1, "partitioner": "murmur2_random", "logger": quiet}
    )
    chosen: dict[bytes, int] = {}

    def delivered(err: object, msg: Message) -> None:
        assert err is None
        chosen[msg.key()] = msg.partition()

    keys = [f"wf-{n:032x}".encode() for n in range(64)] + [b"a", b"ab", b"abc", b"abcd"]
    for key in keys:
        producer.produce("keys", value=b"", key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    count = len(producer.list_topics("keys", timeout=10).topics["keys"].partitions)
    assert count > 1
    assert {k: partition_for(k, count) for k in keys} == chosen
    assert len(set(chosen.values())) > 1  # the keys really spread
