"""How the ``fleet`` command writes for people: rich on a terminal, plain text on a pipe.

A table is declared once (:class:`Table`: its columns, then its rows). On a terminal rich
draws it, with colour; when stdout is not a terminal (a script, a test, ``| grep``) it is
plain, stable text: columns padded and separated by two spaces, numbers right-aligned,
no colour, no box, no wrapping, trailing spaces trimmed, so ``split()`` reads it. Whether
a stream is a terminal is its ``isatty()`` alone: FORCE_COLOR and the like would turn a
test's or a script's output into escape codes. NO_COLOR keeps a terminal colourless.
JSON outputs never come through here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

# Colours of workflow event kinds and outcomes on a terminal.
KIND_STYLES = {
    "COMPLETED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "CANCELLED": "yellow",
    "ACCEPTED": "cyan",
}


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a fake stream
        return False


def console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (stdout by default, looked up now: tests swap it) that
    prints text as it is: no markup, no emoji codes, no guessed highlighting, no wrapping
    of long lines; colour only on a terminal."""
    stream = sys.stdout if stream is None else stream
    terminal = is_terminal(stream)
    return Console(
        file=stream,
        force_terminal=terminal,
        no_color=not terminal or bool(os.environ.get("NO_COLOR")),
        color_system="auto" if terminal else None,
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=True,
    )


def echo(*parts: str | Text, stream: TextIO | None = None) -> None:
    """One line of text, pieces joined by a space; styled pieces keep their colour on a
    terminal and lose it on a pipe."""
    line = Text(" ").join(p if isinstance(p, Text) else Text(p) for p in parts)
    console(stream).print(line)


@dataclass(frozen=True)
class Column:
    header: str
    right: bool = False  # numbers: right-aligned
    style: str = ""  # on a terminal only
    width: int | None = None  # fixed width of a streamed row (see Table.row_text)


@dataclass
class Table:
    """Columns declared once; printed as a rich table on a terminal, as plain text else."""

    columns: Sequence[Column]
    title: str | None = None
    rows: list[list[str | Text]] = field(default_factory=list)

    def add(self, *cells: str | Text) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def plain(self) -> str:
        """The table as plain text: widths fit the widest cell, two spaces between."""
        cells = [[c.header for c in self.columns]] + [
            [cell.plain if isinstance(cell, Text) else cell for cell in row] for row in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join(
            "  ".join(
                cell.rjust(widths[i]) if self.columns[i].right else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
            for row in cells
        )

    def header_text(self) -> str:
        """The header of a streamed table (fixed widths, one space between)."""
        return self.row_text([c.header for c in self.columns])

    def row_text(self, cells: Sequence[str]) -> str:
        """One row of a table streamed line by line, before its widest cell is known:
        each column padded to its fixed width, the last one as it is."""
        last = len(self.columns) - 1
        return " ".join(
            cell if i == last or column.width is None
            else cell.rjust(column.width) if column.right
            else cell.ljust(column.width)
            for i, (column, cell) in enumerate(zip(self.columns, cells, strict=True))
        ).rstrip()  # fmt: skip

    def rich(self) -> RichTable:
        table = RichTable(
            title=self.title, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left"
        )
        for column in self.columns:
            table.add_column(
                column.header,
                justify="right" if column.right else "left",
                style=column.style or None,
                no_wrap=column.right,
            )
        for row in self.rows:
            table.add_row(*row)
        return table

    def print(self, stream: TextIO | None = None) -> None:
        stream = sys.stdout if stream is None else stream
        if is_terminal(stream):
            console(stream).print(self.rich())
            return
        if self.title:
            print(self.title, file=stream)
        print(self.plain(), file=stream, flush=True)


def format_duration(ms: int | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 m 05 s``, ``2 h 03 m``."""
    if ms is None:
        return "-"
    if ms < 1_000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes} m {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"
