"""Plain-text tables for the CLI: first column left-aligned, the others right-aligned."""

from collections.abc import Sequence


def render_table(rows: Sequence[Sequence[str]], footer: bool = False) -> str:
    """rows[0] is the header; with footer=True the last row is set off by a rule, like a total."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    rule = "-" * max(len(line) for line in lines)
    lines.insert(1, rule)
    if footer:
        lines.insert(len(lines) - 1, rule)
    return "\n".join(lines)
