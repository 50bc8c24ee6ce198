"""``fleet dlq list | show | redrive``: the dead-letter office on the command line, and how
its letters, one dead letter and a redrive report are printed."""

from __future__ import annotations

import json
import os
import sys

import click

from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import LETTER_ID, InOrder, filter_options, with_broker
from fleetctl.console import Column, Table, is_terminal
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

# `dlq list` streams a line per dead letter as it reads them when piped: fixed widths.
LETTERS = Table(
    [
        Column("ID", width=10),
        Column("TIME (UTC)", width=24),
        Column("SOURCE", width=40),
        Column("ERROR", width=16, style="red"),
        Column("REDRIVEN", width=9),
        Column("MESSAGE"),
    ]
)


@click.group(
    "dlq",
    cls=InOrder,
    short_help="List, show and redrive dead letters.",
    help="Dead letters: records a consumer could not use (undecodable, invalid), kept on "
    "dead.letters with why. List them, show one, and redrive them onto their source topic "
    "once fixed; each is redriven at most once.",
)
def dlq() -> None:
    pass


def _filter(
    settings: Settings,
    since: int | None,
    topics: tuple[str, ...],
    error_types: tuple[str, ...],
    ids: tuple[LetterId, ...] = (),
) -> LetterFilter:
    return LetterFilter(
        topics=frozenset(topics),
        error_types=frozenset(error_types),
        since_ms=since,
        ids=frozenset(ids),
        prefix=settings.topic_prefix,
    )


@dlq.command("list", help="One line per dead letter, oldest first (a bounded read).")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter and line")
@with_broker
def list_letters(
    settings: Settings,
    *,
    since: int | None,
    topics: tuple[str, ...],
    error_types: tuple[str, ...],
    as_json: bool,
) -> int:
    flt = _filter(settings, since, topics, error_types)
    try:
        _list(DeadLetterOffice(settings), flt, as_json=as_json)
    except BrokenPipeError:  # `fleet dlq list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return EXIT_OK


@dlq.command("show", help="Everything in one dead letter: headers, bytes, and the record decoded.")
@click.argument("letter_id", metavar="ID", type=LETTER_ID, help="PARTITION:OFFSET, as listed")
@with_broker
def show(settings: Settings, letter_id: LetterId) -> int:
    return _show(DeadLetterOffice(settings), letter_id)


@dlq.command(
    "redrive",
    help="Re-inject the dead letters the filters select onto their source topic, each once "
    "(one transaction with a marker per letter; a second run skips them).",
)
@filter_options
@click.option(
    "--id",
    "ids",
    multiple=True,
    type=LETTER_ID,
    metavar="ID",
    help="only this dead letter, PARTITION:OFFSET as listed (repeatable)",
)
@click.option("--dry-run", is_flag=True, help="list what would be redriven, inject nothing")
@with_broker
def redrive(
    settings: Settings,
    *,
    since: int | None,
    topics: tuple[str, ...],
    error_types: tuple[str, ...],
    ids: tuple[LetterId, ...],
    dry_run: bool,
) -> int:
    office = DeadLetterOffice(settings)
    report = office.redrive(_filter(settings, since, topics, error_types, ids), dry_run=dry_run)
    _print_report(report)
    return EXIT_OK


def _list(office: DeadLetterOffice, flt: LetterFilter, *, as_json: bool) -> None:
    done = office.markers()
    terminal = not as_json and is_terminal()
    table = Table(LETTERS.columns)
    if not as_json and not terminal:
        print(LETTERS.header_text())
    for entry in office.entries():
        if flt.matches(entry):
            marker = done.get(str(entry.id))
            marker = marker if marker and marker.covers(entry) else None
            if as_json:
                _print_json(entry, marker)
                continue
            cells = _cells(entry, marker)
            if terminal:
                table.add(*cells)
            else:
                print(LETTERS.row_text(cells), flush=True)
    if terminal:
        table.print()


def _print_json(entry: Entry, marker: Marker | None) -> None:
    letter = entry.letter
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


def _cells(entry: Entry, marker: Marker | None) -> list[str]:
    redriven = "yes" if marker is not None else "no"
    letter = entry.letter
    if letter is None:
        return [str(entry.id), "?", "?", "(undecodable)", redriven, entry.problem]
    message = letter.error_message.replace("\n", " ")
    message = message if len(message) <= 80 else message[:79] + "…"
    return [
        str(entry.id),
        iso_ms(letter.at_ms),
        entry.source,
        letter.error_type,
        redriven,
        message,
    ]


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
