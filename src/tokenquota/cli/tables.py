"""Tables that never cut a number: wrap at spaces, drop empty columns, or go vertical.

Rich shrinks a table that is wider than the terminal by cutting cells
(``1,000…``), which for a quota tool is the worst thing it can do: a limit
read wrong is a limit set wrong. ``Listing`` decides how to lay its rows out
when it is rendered, from the width it is given:

1. a table whose every column is as wide as its longest word, so text may wrap
   at spaces (at most ``MAX_LINES`` lines a cell) but no word or number breaks;
2. the same without the columns that are empty in every row;
3. one block of ``name  value`` lines per row, which fits any terminal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

Cell = str | Text
Justify = Literal["left", "right"]

# A cell that would need more lines than this makes the row a block instead.
MAX_LINES: Final = 3
# Rich's default box with one space of padding each side: 3 columns per column, plus one.
_PER_COLUMN: Final = 3
_EMPTY: Final = frozenset({"", "-"})


@dataclass
class _Column:
    name: str
    justify: Justify
    no_wrap: bool
    cells: list[Text] = field(default_factory=list)

    def natural(self) -> int:
        return max([len(self.name), *(c.cell_len for c in self.cells)])

    def floor(self) -> int:
        """The narrowest this column may be: no word breaks, no cell over MAX_LINES lines."""
        if self.no_wrap:
            return self.natural()
        widest = len(self.name)
        for cell in self.cells:
            words = cell.plain.split()
            longest = max((len(w) for w in words), default=0)
            widest = max(widest, longest, math.ceil(cell.cell_len / MAX_LINES))
        return widest

    def empty(self) -> bool:
        return all(c.plain.strip() in _EMPTY for c in self.cells)


class Listing:
    """Rows under named columns, laid out for the width at hand (see the module)."""

    def __init__(self, title: str | None = None) -> None:
        self.title = title
        self._columns: list[_Column] = []
        self._rows = 0

    def add_column(self, name: str, justify: Justify = "left", *, no_wrap: bool = False) -> None:
        """``no_wrap`` for values that read badly over two lines (times, ids)."""
        self._columns.append(_Column(name, justify, no_wrap))

    def add_row(self, *cells: Cell) -> None:
        if len(cells) != len(self._columns):
            raise ValueError(f"{len(cells)} cells for {len(self._columns)} columns")
        for column, cell in zip(self._columns, cells, strict=True):
            column.cells.append(cell if isinstance(cell, Text) else Text(cell))
        self._rows += 1

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        columns = self._columns
        widths = _fit(columns, width)
        if widths is None and self._rows:
            columns = [c for c in self._columns if not c.empty()]
            widths = _fit(columns, width)
        if widths is None and self._rows and columns:
            yield from self._blocks(columns)
            return
        yield self._table(columns, widths)

    def _table(self, columns: Sequence[_Column], widths: Sequence[int] | None) -> Table:
        table = Table(title=self.title, title_justify="left")
        for i, column in enumerate(columns):
            table.add_column(
                column.name,
                justify=column.justify,
                no_wrap=column.no_wrap,
                overflow="fold",
                width=None if widths is None else widths[i],
            )
        for row in range(self._rows):
            table.add_row(*(c.cells[row] for c in columns))
        return table

    def _blocks(self, columns: Sequence[_Column]) -> Iterable[Table | Text]:
        if self.title:
            yield Text(self.title, style="italic")
        label = max(len(c.name) for c in columns)
        for row in range(self._rows):
            block = Table.grid(padding=(0, 2))
            block.add_column(no_wrap=True, min_width=label)
            block.add_column(overflow="fold")
            for column in columns:
                block.add_row(column.name, column.cells[row])
            yield block
            if row + 1 < self._rows:
                yield Text("")


def _fit(columns: Sequence[_Column], width: int) -> list[int] | None:
    """Column widths that fit ``width``, shrinking the widest first; None if none do."""
    if not columns:
        return []
    room = width - (_PER_COLUMN * len(columns) + 1)
    widths = [c.natural() for c in columns]
    floors = [c.floor() for c in columns]
    if sum(floors) > room:
        return None
    while sum(widths) > room:
        # Take one cell from the widest column still above its floor.
        i = max((i for i in range(len(columns)) if widths[i] > floors[i]), key=lambda i: widths[i])
        widths[i] -= 1
    return widths


__all__ = ["MAX_LINES", "Listing"]
