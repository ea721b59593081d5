"""One verdict type for every hypothesis check: theory, mergeability and the real-model bridge.

A check returns its evidence (NamedTuples with uncertainties) and a :class:`Verdict`:
a ``status`` from :data:`STATUSES` and a ``reason`` (the counterexample, the
assumption, or the interval that decided it). ``str(verdict)`` is the one-line prose
form ``"status: reason"`` (or just ``"status"``): a verdict *is* that string (a ``str``
subclass), so it is written unchanged to results sidecars and the report, and code reads
``verdict.status`` instead of parsing prose back.

Example:
  >>> v = Verdict("fails", "convex step at n=3")
  >>> v.status, str(v), v.holds
  ('fails', 'fails: convex step at n=3', False)
  >>> Verdict.parse("holds under stated assumptions: in expectation only").status
  'holds under stated assumptions'
"""

from __future__ import annotations

__all__ = ["HOLDS", "HOLDS_UNDER_ASSUMPTIONS", "FAILS", "INCONCLUSIVE", "STATUSES", "Verdict"]

HOLDS = "holds"
HOLDS_UNDER_ASSUMPTIONS = "holds under stated assumptions"
FAILS = "fails"
INCONCLUSIVE = "inconclusive"
STATUSES = (HOLDS, HOLDS_UNDER_ASSUMPTIONS, FAILS, INCONCLUSIVE)
"""Every status a check can return, strongest first."""


class Verdict(str):
    """The outcome of a hypothesis check: ``Verdict(status, reason="")``.

    A ``str`` whose text is the prose form ``"status: reason"`` (or ``"status"``), so it
    goes unchanged into results sidecars, report tables and string comparisons written
    before this type existed; code reads :attr:`status`, :attr:`reason` and :attr:`holds`
    instead of splitting the prose.

    Attributes:
      status: one of :data:`STATUSES`.
      reason: why (the counterexample for ``"fails"``, the assumption for ``"holds under
        stated assumptions"``, the interval for ``"inconclusive"``); may be empty.
    """

    status: str
    reason: str

    def __new__(cls, status: str, reason: str = "") -> Verdict:
        if status not in STATUSES:
            raise ValueError(f"unknown verdict status {status!r}; expected one of {STATUSES}")
        self = super().__new__(cls, f"{status}: {reason}" if reason else status)
        self.status, self.reason = status, str(reason)
        return self

    def __getnewargs__(self) -> tuple[str, str]:  # pickling and copying
        return (self.status, self.reason)

    @property
    def holds(self) -> bool:
        """True for ``"holds"`` and ``"holds under stated assumptions"``."""
        return self.status in (HOLDS, HOLDS_UNDER_ASSUMPTIONS)

    @classmethod
    def parse(cls, text: str) -> Verdict:
        """The verdict whose prose is ``text`` (for reading results written as text).

        Raises:
          ValueError: if ``text`` does not start with a known status.
        """
        for status in sorted(STATUSES, key=len, reverse=True):
            if text == status:
                return cls(status)
            if text.startswith(status + ": "):
                return cls(status, text[len(status) + 2 :])
        raise ValueError(f"not a verdict: {text!r}; expected one of {STATUSES} [: reason]")
