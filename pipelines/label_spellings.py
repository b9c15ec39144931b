"""Class labels that mean one class but are spelled several ways in the data: merged, or refused, and said.

Each family is decided once:
- the same text with other surrounding spaces (`yes` and ` yes`): merged, with a warning;
- the same number (`1`, `1.0`, `01`; a JSON 1 and 1.0): merged, with a warning;
- the same text in another case (`True` and `true`, `Spam` and `spam`): refused, since case can tell real classes
  apart (`CO` and `Co`); the line names the spellings and the fix (spell each class one way).
A merged class keeps its most frequent spelling (ties: the shorter, then the first in sort order).
"""

import math
from collections import Counter
from dataclasses import dataclass, replace

from .data import Example
from .errors import DataError


@dataclass(frozen=True)
class LabelSpellings:
    """The outcome: every label's spelling after merging, and one warning line (None when nothing merged)."""

    spelling: dict[str, str]  # label as written -> label used
    warning: str | None

    def apply(self, examples: list[Example]) -> list[Example]:
        return [replace(e, label=self.spelling[e.label]) for e in examples]


def merge_spellings(examples: list[Example], where: str) -> LabelSpellings:
    """The spellings of `examples`' labels merged by family (module docstring); DataError for case-only variants."""
    counts = Counter(e.label for e in examples)
    groups: dict[object, list[str]] = {}
    for label in counts:
        groups.setdefault(_meaning(label), []).append(label)
    spelling, merged = {}, []
    for labels in groups.values():
        if len(labels) == 1:  # one spelling, however spaced: kept as written
            spelling[labels[0]] = labels[0]
            continue
        kept = min(labels, key=lambda s: (-counts[s], len(s.strip()), s.strip())).strip()
        spelling.update({label: kept for label in labels})
        others = sorted(repr(label) for label in labels if label != kept)
        moved = sum(counts[label] for label in labels if label != kept)
        merged.append(f"{' and '.join(others)} -> {kept!r} ({moved} row{'s' if moved != 1 else ''})")
    _refuse_case_variants(set(spelling.values()), where)
    warning = (
        f"{where}: labels spelled several ways were merged into one class each: {'; '.join(sorted(merged))}; spell "
        f"each class one way in the data to silence this"
        if merged
        else None
    )
    return LabelSpellings(spelling, warning)


def _meaning(label: str) -> object:
    """What a label says: its number when it is one (finite), else its text without surrounding spaces."""
    text = label.strip()
    try:
        number = float(text.replace("_", "x"))  # float() reads 1_000; a label with '_' stays text
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _refuse_case_variants(labels: set[str], where: str) -> None:
    by_case: dict[str, list[str]] = {}
    for label in sorted(labels):
        by_case.setdefault(label.strip().casefold(), []).append(label)
    clashes = [spellings for spellings in by_case.values() if len(spellings) > 1]
    if clashes:
        shown = "; ".join(" and ".join(map(repr, spellings)) for spellings in clashes[:3])
        raise DataError(
            f"{where}: labels {shown} differ only in case; spell each class one way in the data (if they are "
            f"different classes, rename one)"
        )
