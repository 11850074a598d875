"""The test tree imports its modules by basename (no packages): two test files with one
name in different folders stop collection ("import file mismatch") for one of them, and
a whole suite silently stops running. Twice this happened when two engineers named
their files alike; this makes it a failure at once."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
