"""Build wordnet-senses.jsonl: WordNet 3.0 noun definitions labelled by their lexicographer file.

Source: `data.noun` of WordNet 3.0 as Debian 12 ships it (package wordnet-base, 1:3.0-37), under the WordNet 3.0
licence (Princeton University; use, copy, modify and distribute with the copyright notice kept: see
/usr/share/doc/wordnet-base/copyright). Each line of data.noun is a synset: its lexicographer file number (the
label, e.g. 05 = noun.animal) and its gloss; the text is the definition part of the gloss (before the first
quoted example, which often contains the word itself). The words of the synset are not part of the text.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wn
    python examples/data/build_wordnet_senses.py wn/usr/share/wordnet/data.noun > examples/data/wordnet-senses.jsonl
"""

import json
import sys

from balanced_sample import take_per_label

LEXFILES = {5: "animal", 6: "artifact", 8: "body", 13: "food", 15: "location", 18: "person", 20: "plant",
            27: "substance"}
PER_CLASS = 300


def parse_synsets(lines) -> list[dict]:
    rows = []
    for line in lines:
        if line.startswith("  ") or " | " not in line:  # the licence header is indented
            continue
        head, gloss = line.rstrip("\n").split(" | ", 1)
        offset, lexfile = head.split()[:2]
        definition = gloss.split('; "')[0].split(' "')[0].strip(" ;")
        rows.append({"offset": offset, "lexfile": int(lexfile), "text": definition})
    return rows


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        rows = parse_synsets(f)
    pools = ([r for r in rows if r["lexfile"] == lexfile and len(r["text"].split()) >= 3] for lexfile in LEXFILES)
    for r in take_per_label(pools, PER_CLASS):
        print(json.dumps({"text": r["text"], "label": LEXFILES[r["lexfile"]], "synset": f"{r['offset']}-n"}))


if __name__ == "__main__":
    main(sys.argv[1])
