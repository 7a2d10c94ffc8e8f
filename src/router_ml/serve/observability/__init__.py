"""What the gateway shows of itself: Prometheus metrics, usage analytics over the call log, budget outlooks."""
