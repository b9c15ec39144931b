"""A separate test file (data.test_path) must measure something: it is not the training file, and not mostly the
training rows again. Scores on rows the adapter trained on are inflated, so the gate would pass a useless adapter."""

import os

from .data import Example
from .errors import DataError


def check_not_training_file(path: str, test_path: str) -> None:
    """data.test_path names another file than data.path (the same file through a link or a hard link counts)."""
    same = path == test_path or ("://" not in path + test_path and os.path.samefile(path, test_path))
    if same:
        raise DataError(
            f"data.test_path {test_path} is data.path: the adapter would be scored on its own training rows; give a "
            f"held-out file, or remove test_path to hold out a split of data.path"
        )


def overlap_warning(train: list[Example], test: list[Example], max_overlap: float, where: str) -> str | None:
    """The share of test rows whose text (spaces normalised) is also a training text: DataError above
    `max_overlap` (data.max_test_overlap), a warning line below it when any, else None."""
    seen = {_words(e.text) for e in train}
    shared = sum(_words(e.text) in seen for e in test)
    if not shared:
        return None
    share = shared / len(test)
    said = f"{share:.1%} of data.test_path's rows ({shared} of {len(test)}) are also in data.path"
    if share > max_overlap:
        raise DataError(
            f"{where}: {said}, above data.max_test_overlap {max_overlap:g}: the test score would be inflated; remove "
            f"them from one file, or raise data.max_test_overlap"
        )
    return f"{where}: {said} (data.max_test_overlap {max_overlap:g}); their scores are inflated"


def _words(text: str) -> str:
    return " ".join(text.split())
