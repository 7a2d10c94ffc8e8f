"""The bundle the server routes with, swappable while requests are in flight.

A request takes the current bundle once and uses it to the end; ``reload`` loads the new
bundle completely before swapping one reference, so no request ever sees half a bundle.

With several worker processes, ``POST /admin/reload`` reaches one of them; every worker also
watches its bundle directory (:func:`watch`) and reloads when ``bundle.json`` changes, so a
retrained bundle written in place is served by all workers within the watch interval. A bundle
caught half-written fails its checksum and is retried at the next look; the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from router_ml.bundle import META_FILE, PREDICTORS_FILE, Bundle, load_bundle

log = logging.getLogger(__name__)


def _stamp(directory: Path) -> tuple | None:
    """Modification times and sizes of the bundle's two files (None while one is missing)."""
    try:
        return tuple((s.st_mtime_ns, s.st_size) for s in ((directory / n).stat() for n in (META_FILE, PREDICTORS_FILE)))
    except OSError:
        return None


class BundleHolder:
    def __init__(self, directory: Path, encoder=None):
        self.directory = Path(directory)
        self._encoder = encoder
        self._lock = threading.Lock()
        self._stamp = _stamp(self.directory)
        self.current: Bundle = load_bundle(self.directory, encoder=encoder)

    def reload(self, directory: Path | None = None) -> Bundle:
        """Load ``directory`` (default: the same one again) and make it current; the old one keeps
        serving until the new one has loaded."""
        directory = Path(directory) if directory else self.directory
        with self._lock:
            stamp = _stamp(directory)
            fresh = load_bundle(directory, encoder=self._encoder)
            self.current, self.directory, self._stamp = fresh, directory, stamp
        return fresh

    def changed_on_disk(self) -> bool:
        """Whether the directory's files are not the ones loaded (by modification time and size)."""
        return _stamp(self.directory) != self._stamp


async def watch(holder: BundleHolder, every: float = 2.0) -> None:
    """Reload ``holder`` (in a thread, off the event loop) whenever its bundle changes on disk; runs until
    cancelled. A failed load is retried at the next look (logged once per state of the files)."""
    logged = None
    while True:
        await asyncio.sleep(every)
        if not holder.changed_on_disk():
            continue
        stamp = _stamp(holder.directory)
        try:
            bundle = await asyncio.to_thread(holder.reload)
            log.warning("bundle %s changed on disk: now serving %s", holder.directory, bundle.version)
        except Exception as exc:  # a bundle being written, or a bad one: keep serving the old one
            if stamp != logged:
                log.error("bundle %s changed on disk but does not load (still serving %s): %s",
                          holder.directory, holder.current.version, exc)
                logged = stamp
