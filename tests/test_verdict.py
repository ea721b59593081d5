"""The shared Verdict type: prose round trip and status handling."""

import pytest

from mergetheory.verdict import STATUSES, Verdict


@pytest.mark.parametrize(
    "text, status, reason",
    [
        ("holds", "holds", ""),
        ("holds under stated assumptions", "holds under stated assumptions", ""),
        (
            "holds under stated assumptions: in expectation only",
            "holds under stated assumptions",
            "in expectation only",
        ),
        ("fails: convex step at n=3: d2 = 0.1", "fails", "convex step at n=3: d2 = 0.1"),
        ("inconclusive", "inconclusive", ""),
    ],
)
def test_parse_and_str_round_trip(text, status, reason):
    v = Verdict.parse(text)
    assert (v.status, v.reason) == (status, reason)
    assert str(v) == text


def test_holds_covers_both_positive_statuses():
    assert [Verdict(s).holds for s in STATUSES] == [True, True, False, False]


@pytest.mark.parametrize("text", ["", "hold", "failed: x", "holds:x", "Holds"])
def test_parse_rejects_prose_that_is_not_a_verdict(text):
    with pytest.raises(ValueError, match="not a verdict"):
        Verdict.parse(text)


def test_unknown_status_is_rejected():
    with pytest.raises(ValueError, match="unknown verdict status 'maybe'"):
        Verdict("maybe")


def test_a_verdict_is_its_prose():
    import copy
    import json
    import pickle

    v = Verdict("fails", "not unique")
    assert v == "fails: not unique" and v.startswith("fails")
    assert json.loads(json.dumps({"v": v})) == {"v": "fails: not unique"}
    for w in (pickle.loads(pickle.dumps(v)), copy.deepcopy(v)):
        assert (type(w), w.status, w.reason) == (Verdict, "fails", "not unique")
