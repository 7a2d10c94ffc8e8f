"""Wire helpers shared by the HTTP provider adapters: default timeouts, message text, Retry-After."""

from __future__ import annotations

import email.utils
import time

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def message_text(content) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds from Retry-After (seconds or an HTTP date) or retry-after-ms; None when absent or unreadable."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
