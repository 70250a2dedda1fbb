#!/usr/bin/env python3
"""Where one process's CPU goes, from a py-spy raw profile.

    py-spy record --pid PID --duration 20 --rate 200 --format raw --nonblocking -o PROC.txt
    tools/py-spy-summary.py PROC.txt [--top 15]

Each line of py-spy's raw (collapsed) format is `frame;frame;...;frame COUNT`,
the innermost frame last, each frame `function (file:line)`. This prints the
share of samples by the innermost frame's library (its top-level package or
our src/ module) and by innermost function: the self time. Idle threads are
not sampled (py-spy's default), so shares are of busy time.
Used for docs/benchmarks.md ("Where the time goes").
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def library(path: str) -> str:
    """The package a file belongs to. py-spy writes paths relative to their
    sys.path entry (grpc/aio/_call.py, threading.py): the first part. Absolute
    paths: what follows site-packages/ or lib/python3.x/, or src/ for ours."""
    parts = Path(path).parts
    if parts and not path.startswith("/"):
        return parts[0] if len(parts) > 1 else Path(parts[0]).stem
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            rest = parts[parts.index(anchor) + 1:]
            return rest[0] if len(rest) > 1 else Path(rest[0]).stem
    if "src" in parts:
        return "src/" + Path(path).stem
    for i, part in enumerate(parts):
        if part.startswith("python3"):
            rest = parts[i + 1:]
            return ("stdlib:" + (rest[0] if len(rest) > 1 else Path(rest[0]).stem)) if rest else "stdlib"
    return Path(path).name or path


def summarize(lines: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    total, by_library, by_function = 0, Counter(), Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        innermost = stack.rsplit(";", 1)[-1]
        match = FRAME.match(innermost)
        func, file = (match["func"], match["file"]) if match else (innermost, "?")
        samples = int(count)
        total += samples
        by_library[library(file)] += samples
        by_function[f"{func} ({library(file)})"] += samples
    return total, by_library, by_function


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for path in args.profiles:
        total, by_library, by_function = summarize(path.read_text(errors="replace").splitlines())
        print(f"## {path.name}: {total} busy samples")
        if not total:
            continue
        for title, counter in (("library", by_library), ("function", by_function)):
            print(f"| {title} | share |\n|---|---|")
            for name, samples in counter.most_common(args.top):
                print(f"| {name} | {100 * samples / total:.1f} % |")
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
