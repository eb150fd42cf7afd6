"""RESULTS.md's layout: a title, one harness section per CPU family, then the hand-written part.

A ratio measured on one CPU family says little about another, so each family keeps the section of the
latest harness run on it. Invariant: a rewrite replaces only the section of the family the harness ran
on (or adds it after the others) and copies every other family's section, marker to marker, and the
file from KEEP_MARKER on byte for byte. Above KEEP_MARKER, text outside the sections is the title,
rewritten each time; a file without section markers (written before families were kept apart) is
replaced above KEEP_MARKER whole, as it always was.
"""

from __future__ import annotations

import re

KEEP_MARKER = "<!-- measured by hand below this line: kept when the harness rewrites this file -->"
TITLE = ("# batchllm benchmark results\n\n"
         "One section per CPU family, each written by the latest `python -m benchmarks` run on a CPU of that family "
         "(the engines' kernels are chosen by CPU flags, so a figure holds for its family only); the results "
         "measured by hand follow the sections.\n\n")
START = "<!-- harness section: {} -->\n"
END = "<!-- end of harness section: {} -->\n"
SECTION = re.compile(r"<!-- harness section: (.+?) -->\n(.*?)<!-- end of harness section: \1 -->\n", re.S)


def split(text: str) -> tuple[str, str]:
    """(the harness's part, the kept part from KEEP_MARKER on; "" when there is no marker)."""
    cut = text.find(KEEP_MARKER)
    return (text, "") if cut < 0 else (text[:cut], text[cut:])


def sections(text: str) -> dict[str, str]:
    """CPU family -> the body of its section, in file order, from the part above KEEP_MARKER."""
    return {m.group(1): m.group(2) for m in SECTION.finditer(split(text)[0])}


def rewrite(old: str, family: str, body: str) -> str:
    """The new file: `family`'s section holds `body`; other sections and the kept part are as in `old`."""
    harness, kept = split(old)
    found = sections(harness)
    # a blank line ends the body's last table before the end marker; an existing family keeps its place
    found[family] = body.rstrip("\n") + "\n\n"
    return TITLE + "".join(START.format(f) + b + END.format(f) + "\n" for f, b in found.items()) + kept
