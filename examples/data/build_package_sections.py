"""Build package-sections.jsonl: Debian package synopses labelled by archive section.

Source: the package index of Debian 12 "bookworm" main (`apt-cache dumpavail`), fields
Package, Section and the first line of Description. Each synopsis is part of its package's
control data and ships under that package's DFSG-free licence.

Run on a Debian machine after `apt-get update`:
    apt-cache dumpavail | python examples/data/build_package_sections.py > examples/data/package-sections.jsonl
    apt-cache dumpavail | python examples/data/build_package_sections.py mail web database net 300 \
        > examples/data/server-sections.jsonl
"""

import json
import re
import sys

from balanced_sample import take_per_label

SECTIONS = ("games", "sound", "graphics", "science")
PER_SECTION = 400
SKIP = re.compile(r"transitional|dummy|debug symbols|documentation|data files", re.I)


def parse_index(text: str) -> list[dict]:
    rows = []
    for record in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", record, re.M))
        if {"Package", "Section", "Description"} <= fields.keys():
            rows.append({"package": fields["Package"], "section": fields["Section"].split("/")[-1],
                         "text": fields["Description"].strip()})
    return rows


def main(sections: tuple[str, ...] = SECTIONS, per_section: int = PER_SECTION) -> None:
    rows = parse_index(sys.stdin.read())
    pools = (
        sorted((r for r in rows if r["section"] == section and not SKIP.search(r["text"])), key=lambda r: r["package"])
        for section in sections
    )
    for r in take_per_label(pools, per_section):
        print(json.dumps({"text": r["text"], "label": r["section"], "package": r["package"]}))


if __name__ == "__main__":
    if len(sys.argv) > 2:
        main(tuple(sys.argv[1:-1]), int(sys.argv[-1]))
    else:
        main()
