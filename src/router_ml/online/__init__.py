"""The online quality loop: what share of the reference model's quality a tenant's routed traffic keeps, measured
on that traffic (judged shadow pairs, corrected by a few exact labels), and the operating point that keeps its
lower confidence bound at the target. Pure computation, no I/O: the gateway and the replay simulator
(:mod:`router_ml.online.simulate`) run the same code."""
