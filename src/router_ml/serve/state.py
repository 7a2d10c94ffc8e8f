"""The bundle the server routes with, swappable while requests are in flight.

A request takes the current bundle once and uses it to the end; ``reload`` loads the new
bundle completely before swapping one reference, so no request ever sees half a bundle.
"""

from __future__ import annotations

import threading
from pathlib import Path

from router_ml.bundle import Bundle, load_bundle


class BundleHolder:
    def __init__(self, directory: Path, encoder=None):
        self.directory = Path(directory)
        self._encoder = encoder
        self._lock = threading.Lock()
        self.current: Bundle = load_bundle(self.directory, encoder=encoder)

    def reload(self, directory: Path | None = None) -> Bundle:
        """Load ``directory`` (default: the same one again) and make it current; the old one keeps
        serving until the new one has loaded."""
        directory = Path(directory) if directory else self.directory
        with self._lock:
            fresh = load_bundle(directory, encoder=self._encoder)
            self.current, self.directory = fresh, directory
        return fresh
