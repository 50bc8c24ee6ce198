"""Which partition a key lands on: Kafka's murmur2 partitioner, as the Java client does it.

Our producers use librdkafka's ``murmur2_random`` (fleet.kafka.clients), the Java
client's default for keyed records: ``toPositive(murmur2(key)) % partitions``. confluent_kafka
exposes no helper for it, so it is written out here, checked against the Java client's own
test values and, on a real broker, against the partitions librdkafka chose. A reader that
knows a workflow's id can then read the one partition that holds its records (``fleet
tail --workflow``, the top-up check) instead of the whole topic.
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit MurmurHash2 of ``data``, as a signed int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    # Java's switch falls through: 3 bytes left mix in all three, 2 in two, 1 in one.
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: ``toPositive(murmur2(key)) % n``."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
