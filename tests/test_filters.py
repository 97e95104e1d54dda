"""Output filters: RE2, matched a page at a time, give exactly the lines a per-line search gives."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from descartes_fast.agents.filters import FilterError, LineFilter

# pieces whose meaning Python's re (with re.ASCII: RE2's \w, \d, \s and \b are ASCII) and RE2 share,
# so re can be the oracle
PIECES = ["a", "b", "é", " ", ".", "a*", "b+", "(a|b)", "[^a]", "[ab]", r"\s", r"\S", r"\w", r"\d", "^", "$",
          "x?", "(ab)+", ".*", "(?i:A)", r"\b", "0"]
patterns = st.lists(st.sampled_from(PIECES), min_size=0, max_size=5).map("".join)
lines = st.lists(st.text(alphabet="abé x0\t\r", max_size=12), max_size=30)


@settings(max_examples=400, deadline=None)
@given(pattern=patterns, page=lines)
def test_a_page_matches_as_its_lines_would_one_by_one(pattern, page) -> None:
    want = [i for i, line in enumerate(page) if re.search(pattern, line, re.ASCII)]
    assert LineFilter(pattern).matching(page) == want, (pattern, page)


@pytest.mark.parametrize("pattern", [r"\Aa", r"b\z", r"\Ab\z"])
def test_the_start_and_end_of_the_text_mean_the_line(pattern) -> None:
    page = ["ab", "b", "ba", "", "a"]
    assert LineFilter(pattern).matching(page) == [i for i, line in enumerate(page)
                                                  if re.search(pattern.replace(r"\z", r"\Z"), line)]


def test_backtracking_patterns_cost_what_simple_ones_do() -> None:
    page = ["a" * 40 + "!"] * 200
    assert LineFilter("(a+)+$").matching(page) == []  # Python's re: 2**40 steps for each line
    assert LineFilter("(a+)+!$").matching(page) == list(range(200))


@pytest.mark.parametrize("pattern,reason", [
    (r"(a)\1", r"invalid escape sequence: \1"),
    ("(?=a)", "invalid perl operator: (?="),
    ("(", "missing ): ("),
])
def test_what_rE2_cannot_do_is_refused_with_its_reason(pattern, reason) -> None:
    with pytest.raises(FilterError, match=re.escape(reason) + r" \(filters are RE2 expressions"):
        LineFilter(pattern)
