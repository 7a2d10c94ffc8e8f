"""How often the online loop judges a tenant's call: front-loaded, because labels matter most while the operating
point is still near the reference (where a label is also cheapest: the served answer is the reference's, so only
the cheaper levels' answers and the judge are paid for) and each later label costs a shadow call of the reference.

The ``t``-th call since the tenant's ladder was placed is judged with probability ``rate / 2 * sqrt(horizon / t)``
(capped at 1): about ``rate`` of the first ``horizon`` calls in all, and less from then on. A judged call's labels
weigh the inverse of that probability, so the estimate stays unbiased whatever the schedule.
"""

from __future__ import annotations

import math

HORIZON = 2000  # calls over which about ``rate`` of the calls are judged


def judging_chance(rate: float, t: int, horizon: int = HORIZON) -> float:
    """The probability of judging the ``t``-th call (from 1) at a mean ``rate`` over the first ``horizon``."""
    return min(1.0, rate / 2 * math.sqrt(horizon / max(t, 1)))
