"""Build webster-fields.jsonl: definitions of Webster's Revised Unabridged Dictionary (1913) labelled by their field.

Source: GCIDE, the GNU Collaborative International Dictionary of English 0.48, as Debian 12 ships it (package
dict-gcide 0.48.5+nmu2, file gcide.dict.dz), under the GNU General Public License version 2 or later (the notice
and the licence's text are in GCIDE-LICENSE beside the data). Only senses GCIDE marks `[1913 Webster]` are used:
the text of Webster's 1913 edition (C. & G. Merriam Co., itself out of copyright), not the definitions GCIDE took
from WordNet or added since.
A sense that names its field (`2. (Naut.) A rope ...`, or `Word \\Pron\\, n. [Etym.] (Law) A plea ...`) gives one
example: the label is the field, the text the definition up to its first citation (`--Author`), without bracketed
notes and cross-reference braces. The headword is not part of the text. One example per entry (its first such
sense); twelve fields (not zoology, botany or anatomy, which mirror wordnet-senses' animal, plant and body),
180 definitions of at least 5 words each.

    apt-get download dict-gcide && dpkg-deb -x dict-gcide_*.deb gcide
    python examples/data/build_webster_fields.py gcide/usr/share/dictd/gcide.dict.dz \
        > examples/data/webster-fields.jsonl
"""

import gzip
import json
import re
import sys

from balanced_sample import take_per_label

FIELDS = {"Chem.": "chemistry", "Med.": "medicine", "Law": "law", "Naut.": "nautical", "Min.": "mineralogy",
          "Mus.": "music", "Arch.": "architecture", "Mil.": "military", "Physics": "physics", "Geol.": "geology",
          "Math.": "mathematics", "Astron.": "astronomy"}
PER_FIELD = 180
SENSE = re.compile(r"^(?:\d+\.\s*)?(?:\([a-z]\)\s*)?\(([A-Z][A-Za-z]+\.?)\)\s+(.*)$", re.DOTALL)
# `Word \Pron\, pos. [etymology] (Field) definition`: a field in the entry's header line
HEADER = re.compile(r"^[^\\]*\\[^\\]*\\,?\s*[a-z. ;&]*?(?:\[[^\]]*\]\s*)?\(([A-Z][A-Za-z]+\.?)\)\s+(.*)$", re.DOTALL)


def clean(definition: str) -> str:
    definition = re.sub(r"\[[^\]]*\]", "", definition).split(" --")[0]
    return " ".join(re.sub(r"\{([^{}]*)\}", r"\1", definition).split()).strip(" ;,")


def definitions(text: str) -> list[dict]:
    """One row per entry: its first sense with a field, if that sense is Webster's 1913 text."""
    rows = []
    for entry in re.split(r"\n\n(?=\S)", text):
        head, _, body = entry.partition("\n")
        paragraphs = [" ".join(line.strip() for line in p.split("\n")).strip() for p in re.split(r"\n\s*\n", body)]
        if not paragraphs:
            continue
        sense = HEADER.match(f"{head.strip()} {paragraphs[0]}")
        sense = sense or next(filter(None, map(SENSE.match, paragraphs)), None)
        if sense and sense.group(2).rstrip().endswith("[1913 Webster]"):
            rows.append({"text": clean(sense.group(2)), "field": sense.group(1), "entry": head.split("\\")[0].strip()})
    return rows


def main(path: str) -> None:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:  # a few stray cp1252 bytes
        rows = definitions(f.read())
    pools = (
        [r for r in rows if r["field"] == field and len(r["text"].split()) >= 5 and "\ufffd" not in r["text"]]
        for field in FIELDS
    )
    for row in take_per_label(pools, PER_FIELD):
        print(json.dumps({"text": row["text"], "label": FIELDS[row["field"]], "entry": row["entry"]}))


if __name__ == "__main__":
    main(sys.argv[1])
