"""Tenants and their API keys, budget and rate-limit counters (in process or on Redis), and the admission of a
call against them."""
