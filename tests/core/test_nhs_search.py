"""The NHS number search jumps between runs of three digits (``sensitivity._sparse_matches``)
instead of trying the pattern at every position; it must find exactly what ``finditer`` finds, on
any text, dense or sparse in digits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.core import sensitivity

ALPHABET = "0123456789 -\u00a0_:aNHSnhs\n."
pieces = st.one_of(
    st.text(alphabet=ALPHABET, max_size=30),
    st.sampled_from(
        [
            "943 476 5919",
            "9434765919",
            "NHS9434765919",
            "943-476-5919 12",
            "a9434765919f",
            "401 023 2137",
            "0000000000",
        ]
    ),
    st.text(alphabet="abc .,\n", min_size=50, max_size=400),  # long stretches, no digits
)


def finditer(text: str) -> list[tuple[int, int, str]]:
    out = []
    for match in sensitivity._NHS_CANDIDATE.finditer(text):
        first, _sep, middle, last = match.groups()[:4] if match[1] else match.groups()[4:]
        digits = first + middle + last
        if sensitivity._check_digits_ok(digits):
            out.append((match.start(), match.end(), digits))
    return out


def ours(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), d) for m, d in sensitivity._nhs_numbers(text)]


@settings(max_examples=500, deadline=None)
@given(st.lists(pieces, max_size=12).map("".join))
def test_nhs_number_search_is_finditers(text: str) -> None:
    assert ours(text) == finditer(text)
    zeros = text.translate(sensitivity._DIGITS_AS_ZERO)
    sparse = [(m.start(), m.end()) for m in sensitivity._sparse_matches(text, zeros)]
    assert sparse == [(m.start(), m.end()) for m in sensitivity._NHS_CANDIDATE.finditer(text)]


def test_a_letter_with_few_digits_takes_the_sparse_path_and_finds_them_all() -> None:
    filler = "Observations stable, medication reviewed, follow-up in two weeks.\n" * 150
    text = f"NHS number 943 476 5919\n{filler}and again 9434765919, not 9434765918.\n"
    assert sum(c.isdigit() for c in text) * sensitivity._SPARSE <= len(text)
    assert sensitivity.find_nhs_numbers(text) == ["9434765919", "9434765919"]
    assert ours(text) == finditer(text)


def test_a_table_of_numbers_takes_finditer_and_finds_them_all() -> None:
    text = " ".join(f"{i:010d}" for i in range(300)) + ", 943 476 5919"
    assert sum(c.isdigit() for c in text) * sensitivity._SPARSE > len(text)
    assert ours(text) == finditer(text)
    assert ours(text)[-1][2] == "9434765919"
