#!/usr/bin/env python3
"""Print how long each real-kernel test took, slowest first, from a JUnit report.

scripts/test runs it after every real-kernel run, so a test that grows slow is
visible in every CI log, not only when someone goes looking.  Stdlib only.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"timings: no report to summarise ({e})", file=sys.stderr)
        return 0
    rows = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        rows.append((float(case.get("time", 0)), name, outcome))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"== real-kernel test timings ({len(rows)} tests, {total:.0f} s in tests)")
    for seconds, name, outcome in rows:
        flag = "" if outcome == "passed" else f"  [{outcome}]"
        print(f"{seconds:8.1f} s  {name}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "results/kernel/junit.xml"))
