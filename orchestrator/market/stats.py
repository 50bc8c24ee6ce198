"""What operators watch about a pool: waits, rounds waited, and fairness over a window.

Pure: the auctioneer reports each award here, the metrics read the numbers out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class AwardStat:
    pool: str
    band: int
    workflow_id: str
    units: int
    wait_ms: int  # from the bid (as its owner stamped it) to the award
    rounds_waited: int


class FairnessWindow:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2), of the units each workflow was
    awarded within the last ``window_ms``: 1 when all got the same, 1/n when one got all.

    Per workflow, because that is who waits: a tenant running many workflows gets more,
    as it asked for more. Bands are policy's deliberate unfairness, so look at it per band.
    """

    def __init__(self, window_ms: int = 60_000) -> None:
        self.window_ms = window_ms
        self._awards: deque[tuple[int, str, int]] = deque()  # (at_ms, workflow, units)

    def add(self, at_ms: int, workflow_id: str, units: int) -> None:
        self._awards.append((at_ms, workflow_id, units))

    def index(self, now_ms: int) -> float | None:
        """None while nothing was awarded in the window."""
        while self._awards and self._awards[0][0] < now_ms - self.window_ms:
            self._awards.popleft()
        per: dict[str, int] = {}
        for _at, workflow_id, units in self._awards:
            per[workflow_id] = per.get(workflow_id, 0) + units
        if not per:
            return None
        total = sum(per.values())
        return total * total / (len(per) * sum(x * x for x in per.values()))


def fill_rate(free: int, demanded: int, awarded: int) -> float | None:
    """Units awarded / min(free units, units demanded) in one round: 1 when the round
    sold all it could. Below 1 when a bid that does not fit holds back the ones behind
    it (no backfilling). None when there was nothing to sell or nobody asked."""
    possible = min(free, demanded)
    return None if possible <= 0 else awarded / possible
