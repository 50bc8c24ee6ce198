"""``fleet dlq list | show | redrive``: the dead-letter office on the command line, and how
its letters, one dead letter and a redrive report are printed."""

from __future__ import annotations

import argparse
import json
import os
import sys

from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.dlq import (
    DeadLetterOffice,
    Entry,
    LetterFilter,
    LetterId,
    Marker,
    RedriveReport,
    decode_known,
    hexdump,
    iso_ms,
    printable,
)


def dlq(args: argparse.Namespace, settings: Settings) -> int:
    office = DeadLetterOffice(settings)
    if args.dlq_command == "show":
        return _show(office, args.id)
    flt = LetterFilter(
        topics=frozenset(args.topic),
        error_types=frozenset(args.error_type),
        since_ms=args.since,
        ids=frozenset(getattr(args, "ids", [])),
        prefix=settings.topic_prefix,
    )
    if args.dlq_command == "redrive":
        report = office.redrive(flt, dry_run=args.dry_run)
        _print_report(report)
        return EXIT_OK
    try:
        _list(office, flt, as_json=args.json)
    except BrokenPipeError:  # `fleet dlq list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return EXIT_OK


def _list(office: DeadLetterOffice, flt: LetterFilter, *, as_json: bool) -> None:
    done = office.markers()
    if not as_json:
        print(f"{'ID':10} {'TIME (UTC)':24} {'SOURCE':40} {'ERROR':16} REDRIVEN  MESSAGE")
    for entry in office.entries():
        if flt.matches(entry):
            marker = done.get(str(entry.id))
            _print_entry(entry, marker if marker and marker.covers(entry) else None, as_json)


def _print_entry(entry: Entry, marker: Marker | None, as_json: bool) -> None:
    letter = entry.letter
    if as_json:
        doc: dict[str, object] = {"id": str(entry.id), "redriven": marker is not None}
        if marker is not None:
            doc["redriven_at"] = iso_ms(marker.at_ms)
        if letter is None:
            doc["undecodable"] = entry.problem
        else:
            doc.update(
                letter.model_dump(mode="json", exclude={"key", "value", "headers"}),
                at=iso_ms(letter.at_ms),
                key=printable(letter.key),
            )
        print(json.dumps(doc), flush=True)
        return
    redriven = "yes" if marker is not None else "no"
    if letter is None:
        print(
            f"{entry.id!s:10} {'?':24} {'?':40} {'(undecodable)':16} {redriven:9} {entry.problem}"
        )
        return
    message = letter.error_message.replace("\n", " ")
    message = message if len(message) <= 80 else message[:79] + "…"
    print(
        f"{entry.id!s:10} {iso_ms(letter.at_ms):24} {entry.source:40} {letter.error_type:16} "
        f"{redriven:9} {message}",
        flush=True,
    )


def _show(office: DeadLetterOffice, letter_id: LetterId) -> int:
    found = office.get(letter_id)
    if found is None:
        print(f"fleet: no dead letter {letter_id} in {office.topics.dead_letters}", file=sys.stderr)
        return EXIT_FAILED
    entry, dlq_headers = found
    marker = office.markers().get(str(letter_id))
    marker = marker if marker is not None and marker.covers(entry) else None
    print(f"id:          {letter_id}")
    print(f"redriven:    {f'yes, at {iso_ms(marker.at_ms)} by {marker.by}' if marker else 'no'}")
    print("record headers:")
    for key, value in dlq_headers:
        print(f"  {key}: {printable(value)}")
    letter = entry.letter
    if letter is None:
        print(f"undecodable dead letter: {entry.problem}")
        return EXIT_OK
    print(f"source:      {entry.source}")
    print(f"time:        {iso_ms(letter.at_ms)}")
    print(f"consumer:    {letter.consumer}")
    print(f"error type:  {letter.error_type}")
    print(f"error:       {letter.error_message}")
    print(f"key:         {printable(letter.key)}")
    size = "null" if letter.value_size is None else f"{letter.value_size} bytes"
    print(
        f"value:       {size}"
        + (" (truncated in the dead letter)" if letter.value_truncated else "")
    )
    print("headers:")
    for header in letter.headers:
        print(f"  {header.key}: {printable(header.value)}")
    if letter.value is not None:
        print(hexdump(letter.value))
        decoded = decode_known(office.codec, letter.value)
        if isinstance(decoded, str):
            print(f"decoded:     none ({decoded})")
        else:
            print(f"decoded as {type(decoded).__name__}:")
            print(json.dumps(decoded.model_dump(), indent=2, default=_bytes_as_text))
    return EXIT_OK


def _bytes_as_text(value: object) -> object:
    return printable(value) if isinstance(value, bytes) else str(value)


def _print_report(report: RedriveReport) -> None:
    verb = "would redrive" if report.dry_run else "redriven"
    for entry in report.redriven:
        print(f"{verb} {entry.id} -> {entry.letter.source_topic if entry.letter else '?'}")
    for entry, reason in report.refused:
        print(f"fleet: cannot redrive {entry.id}: {reason}", file=sys.stderr)
    print(
        f"{verb} {len(report.redriven)}, skipped {len(report.already)} already redriven"
        + (f", refused {len(report.refused)}" if report.refused else "")
    )
