"""The line splitter of segment reads (collector/storage/lines.py): the lines of any
chunking, in linear time, a line past the cap counted and not kept."""

from __future__ import annotations

import io
import random

from collector.storage.lines import OVERLONG, LineSplitter
from collector.storage.segments import iter_lines


def feed_all(split: LineSplitter, data: bytes, rng: random.Random) -> list[bytes]:
    got, at = [], 0
    while at < len(data):
        step = rng.randrange(1, 20)
        lines = split.feed(data[at:at + step])
        got += [OVERLONG + b"=%d" % split.overlong[i] if i in split.overlong else line
                for i, line in enumerate(lines)]
        at += step
    return got


def random_data(rng: random.Random) -> bytes:
    return b"".join(rng.choice([b"\n", b"ab", b"x" * rng.randrange(60), b"\n\n"])
                    for _ in range(rng.randrange(30)))


def test_lines_are_those_bytes_split_gives_for_any_chunking() -> None:
    rng = random.Random(7)
    for _ in range(300):
        data = random_data(rng)
        split = LineSplitter()
        complete, newline, tail = data.rpartition(b"\n")
        assert feed_all(split, data, rng) == (complete.split(b"\n") if newline else [])
        assert split.pending_bytes == len(tail)


def test_a_line_past_the_cap_is_counted_not_kept() -> None:
    rng = random.Random(8)
    for _ in range(300):
        data = random_data(rng)
        split = LineSplitter(max_line=25)
        complete, newline, tail = data.rpartition(b"\n")
        expected = [line if len(line) <= 25 else OVERLONG + b"=%d" % len(line)
                    for line in complete.split(b"\n")] if newline else []
        assert feed_all(split, data, rng) == expected
        assert split.pending_bytes == len(tail)


def test_iter_lines_gives_each_complete_line_with_its_offset() -> None:
    rng = random.Random(9)
    for _ in range(200):
        data = random_data(rng)
        start = rng.randrange(5)
        got = list(iter_lines(io.BytesIO(data), start))
        offset, expected = start, []
        for line in data.splitlines(keepends=True):
            if line.endswith(b"\n"):
                expected.append((offset, line))
            offset += len(line)
        assert got == expected
