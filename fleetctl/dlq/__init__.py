"""Dead letters you can act on: list them, show one, and redrive them onto their source, once.

A dead letter's ID is ``<dead-letter partition>:<offset>``: stable and unique for the
life of the topic. Redrive is exactly-once per ID: the re-injected records and a marker
per ID (in the compacted ``dead.letters.redriven`` topic) are written in one Kafka
transaction, and a run reads the markers only after ``init_transactions`` under a fixed
transactional id, which aborts whatever a crashed or concurrent earlier run left open.

The rooms: :mod:`~fleetctl.dlq.letters` (IDs, entries, markers, filters, parsing; pure),
:mod:`~fleetctl.dlq.display` (how ``show`` presents bytes; pure),
:mod:`~fleetctl.dlq.redrive` (what goes back, what is refused, the transaction) and
:mod:`~fleetctl.dlq.office` (the office that reads the topics and runs a redrive).
"""

from fleetctl.dlq.display import KNOWN_MESSAGES, decode_known, hexdump, printable
from fleetctl.dlq.letters import (
    REDRIVEN,
    Entry,
    Headers,
    LetterFilter,
    LetterId,
    Marker,
    iso_ms,
    parse_id,
    parse_since,
)
from fleetctl.dlq.office import DeadLetterOffice
from fleetctl.dlq.redrive import REDRIVEN_FROM, RedriveReport, redrive_headers, refusal

__all__ = [
    "KNOWN_MESSAGES",
    "REDRIVEN",
    "REDRIVEN_FROM",
    "DeadLetterOffice",
    "Entry",
    "Headers",
    "LetterFilter",
    "LetterId",
    "Marker",
    "RedriveReport",
    "decode_known",
    "hexdump",
    "iso_ms",
    "parse_id",
    "parse_since",
    "printable",
    "redrive_headers",
    "refusal",
]
