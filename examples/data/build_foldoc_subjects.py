"""Build foldoc-subjects.jsonl: definitions from the Free On-line Dictionary of Computing labelled by their subject.

Source: FOLDOC of 19 January 2023 as Debian 12 ships it (package dict-foldoc 20230119-1, file foldoc.dict.dz).
FOLDOC is Copyright 1985 by Denis Howe, under the GNU Free Documentation License 1.1 or later with no invariant
sections: the notice, the credit FOLDOC asks for and the licence's text are in FOLDOC-LICENSE beside the data,
which is a modified version (extracted definitions) under the same licence. Debian's own additions at the end of
the file (Dictionary.debian, under another licence) are left out.
An entry's first sense that carries a subject tag (`<networking, standard> ...`) gives one example: its label is
the tag's first subject, its text the first sentence of that sense with the cross-reference braces removed
(`{Ethernet}` -> `Ethernet`, `{home (http://...)}` -> `home`); the whole paragraph (median 41 tokens, a quarter
over 64) made a run three times as long as wordnet-senses'. The headword is not part of the text. Twelve of the
largest subjects, 200 definitions of at least 6 words each.

    apt-get download dict-foldoc && dpkg-deb -x dict-foldoc_*.deb foldoc
    python examples/data/build_foldoc_subjects.py foldoc/usr/share/dictd/foldoc.dict.dz \
        > examples/data/foldoc-subjects.jsonl
"""

import gzip
import json
import re
import sys

from balanced_sample import take_per_label

SUBJECTS = ("language", "programming", "networking", "jargon", "operating system", "hardware", "communications",
            "company", "mathematics", "storage", "tool", "database")
PER_SUBJECT = 200
TAGGED = re.compile(r"^(?:\d+\.\s*)?<([^>]+)>\s*(.*)$", re.DOTALL)
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]]\.)\s+(?=[A-Z(])")  # the period stays with its sentence
REFERENCE = re.compile(r"\{([^{}]*?)(?:\s*\([^()]*\))?\}")  # {text} or {text (url)}


def definitions(text: str) -> list[dict]:
    """One row per entry: its first subject-tagged paragraph."""
    rows = []
    for entry in re.split(r"\n\n(?=\S)", text.split("\nDictionary.debian")[0]):
        head, _, body = entry.partition("\n")
        for paragraph in re.split(r"\n\s*\n", body):
            tagged = TAGGED.match(" ".join(line.strip() for line in paragraph.split("\n")).strip())
            if tagged:
                definition = SENTENCE_END.split(" ".join(REFERENCE.sub(r"\1", tagged.group(2)).split()))[0]
                rows.append({"text": definition, "label": tagged.group(1).split(",")[0].strip(), "entry": head})
                break
    return rows


def main(path: str) -> None:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = definitions(f.read())
    pools = ([r for r in rows if r["label"] == subject and len(r["text"].split()) >= 6] for subject in SUBJECTS)
    for row in take_per_label(pools, PER_SUBJECT):
        print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1])
