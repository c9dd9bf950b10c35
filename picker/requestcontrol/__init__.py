"""From a parsed request to a decision and back: the director orchestrates, admission
decides whether the request may be scheduled now, accounting keeps picker's counts."""
