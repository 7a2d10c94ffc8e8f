"""The Prometheus text exposition of ``GET /metrics`` read back as samples."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(text: str) -> dict:
    """(sample name, sorted label items) -> value, from the Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
