"""One verdict type for every hypothesis check: theory, mergeability and the real-model bridge.

A check returns its evidence (NamedTuples with uncertainties) and a :class:`Verdict`:
a ``status`` from :data:`STATUSES` and a ``reason`` (the counterexample, the
assumption, or the interval that decided it). ``str(verdict)`` is the one-line prose
form ``"status: reason"`` (or just ``"status"``) written to results sidecars and the
report, so a reader never parses prose back: code reads ``verdict.status``.

Example:
  >>> v = Verdict("fails", "convex step at n=3")
  >>> v.status, str(v), v.holds
  ('fails', 'fails: convex step at n=3', False)
  >>> Verdict.parse("holds under stated assumptions: in expectation only").status
  'holds under stated assumptions'
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HOLDS", "HOLDS_UNDER_ASSUMPTIONS", "FAILS", "INCONCLUSIVE", "STATUSES", "Verdict"]

HOLDS = "holds"
HOLDS_UNDER_ASSUMPTIONS = "holds under stated assumptions"
FAILS = "fails"
INCONCLUSIVE = "inconclusive"
STATUSES = (HOLDS, HOLDS_UNDER_ASSUMPTIONS, FAILS, INCONCLUSIVE)
"""Every status a check can return, strongest first."""


class Verdict(NamedTuple):
    """The outcome of a hypothesis check.

    Attributes:
      status: one of :data:`STATUSES`.
      reason: why (the counterexample for ``"fails"``, the assumption for ``"holds under
        stated assumptions"``, the interval for ``"inconclusive"``); may be empty.
    """

    status: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status

    @property
    def holds(self) -> bool:
        """True for ``"holds"`` and ``"holds under stated assumptions"``."""
        return self.status in (HOLDS, HOLDS_UNDER_ASSUMPTIONS)

    @classmethod
    def parse(cls, text: str) -> Verdict:
        """The verdict whose ``str`` is ``text`` (for reading results written as prose).

        Raises:
          ValueError: if ``text`` does not start with a known status.
        """
        for status in sorted(STATUSES, key=len, reverse=True):
            if text == status:
                return cls(status)
            if text.startswith(status + ": "):
                return cls(status, text[len(status) + 2 :])
        raise ValueError(f"not a verdict: {text!r}; expected one of {STATUSES} [: reason]")

    def validate(self) -> Verdict:
        """Return ``self`` if ``status`` is known, else raise ``ValueError``."""
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}; expected one of {STATUSES}")
        return self
