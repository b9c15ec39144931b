"""The same number of examples per class, drawn reproducibly, each text once: what every build script here keeps."""

import random
from collections.abc import Iterable, Iterator


def take_per_label(pools: Iterable[list[dict]], per_label: int, seed: int = 0) -> Iterator[dict]:
    """Rows of each pool in turn (one pool per class, in the order given): the pool shuffled by one generator
    shared across the pools, rows whose text (case aside) an earlier row had skipped, at most `per_label`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    for pool in pools:
        rng.shuffle(pool)
        kept = 0
        for row in pool:
            if row["text"].lower() in seen:
                continue
            seen.add(row["text"].lower())
            yield row
            kept += 1
            if kept == per_label:
                break
