"""The observation budget: how often picker may poll a pod's ``/metrics``.

Rendering ``/metrics`` costs a model server: vLLM 0.32 renders its 52 KB page in ~10 ms
on its API server's event loop, the one that streams tokens. Polling every 50 ms took
~20 % of that loop and nearly doubled TTFT on real CPU pods. So picker measures each
pod's scrape cost (the time from sending the request to the end of the page, an
exponential moving average) and polls so that the cost stays within ``share`` of the
pod's time (1 % by default):

* half of the budget goes to regular polls: ``interval = cost / (share / 2)``, clamped
  to ``[min_interval, max_interval]``;
* the other half is for early polls, when picker's own accounting says the pod's state
  is uncertain (many requests sent since the last scrape): allowed while the polls of
  the last ``window`` seconds cost at most ``share * window``.

Between scrapes, picker's accounting carries the state (requests sent since the scrape
and still open, their estimated uncached tokens), so a slower poll costs little routing
quality; a pod that pushes its state (vLLM's KV events) needs even fewer polls.
"""

from __future__ import annotations

from collections import deque


class ScrapeBudget:
    """One pod's polling schedule under the budget (see the module doc)."""

    __slots__ = ("_spent", "cost", "max_interval", "min_interval", "share", "window")

    def __init__(
        self,
        share: float = 0.01,
        min_interval: float = 0.05,
        max_interval: float = 2.0,
        window: float = 10.0,
    ) -> None:
        if share < 0 or min_interval <= 0 or max_interval < min_interval or window <= 0:
            raise ValueError("scrape budget: share >= 0, 0 < min_interval <= max_interval")
        self.share = share
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.window = window
        self.cost = 0.0  # EWMA of seconds per scrape; 0 until the first one
        self._spent: deque[tuple[float, float]] = deque()  # (start time, seconds)

    def observe(self, started: float, seconds: float, alpha: float = 0.25) -> None:
        """A scrape started at ``started`` (monotonic) took ``seconds``."""
        self.cost = seconds if not self.cost else self.cost + alpha * (seconds - self.cost)
        self._spent.append((started, seconds))
        self._expire(started)

    def interval(self) -> float:
        """Seconds between regular polls."""
        if not self.share:
            return self.min_interval  # budgeting off: fixed rate
        regular = self.cost / (self.share / 2)
        return min(self.max_interval, max(self.min_interval, regular))

    def may_poll_early(self, now: float) -> bool:
        """True when one more poll now keeps the last ``window`` seconds within budget."""
        if not self.share:
            return True
        self._expire(now)
        spent = sum(s for _, s in self._spent)
        return spent + self.cost <= self.share * self.window

    def spent_share(self, now: float) -> float:
        """The share of the pod's time picker's polls took over the last window."""
        self._expire(now)
        return sum(s for _, s in self._spent) / self.window

    def _expire(self, now: float) -> None:
        spent = self._spent
        while spent and spent[0][0] < now - self.window:
            spent.popleft()
