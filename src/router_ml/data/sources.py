"""Pinned public source files: the manifest, the fetcher and verified local copies.

Every file an importer reads is pinned in ``datasets/manifest.tsv`` by repository,
commit, path and git blob SHA-1. ``fetch`` downloads each file from GitHub at its
pinned commit into a cache directory, or reads a local mirror laid out as
``<mirror>/<source>/<path>`` (optionally gzipped as ``<path>.gz``), and checks every
file's checksum before an importer may read it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MANIFEST_COLUMNS = ("source", "repo", "commit", "path", "git_blob_sha1", "bytes")


class ManifestError(ValueError):
    """The manifest file is malformed."""


class ChecksumError(ValueError):
    """A fetched or mirrored file does not match its pinned checksum."""


class MissingFileError(FileNotFoundError):
    """A pinned file is neither in the mirror nor downloadable."""


@dataclass(frozen=True)
class ManifestEntry:
    source: str
    repo: str
    commit: str
    path: str
    git_blob_sha1: str
    bytes: int

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a file's content (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def load_manifest(path: Path) -> list[ManifestEntry]:
    """Read a manifest TSV; a malformed row is an error naming the file and line."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    entries: list[ManifestEntry] = []
    seen: set[tuple[str, str]] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if tuple(header or ()) != MANIFEST_COLUMNS:
            raise ManifestError(f"{path}:1: header must be {'<TAB>'.join(MANIFEST_COLUMNS)}, got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(MANIFEST_COLUMNS):
                raise ManifestError(f"{path}:{line_no}: expected {len(MANIFEST_COLUMNS)} fields, got {len(row)}")
            source, repo, commit, file_path, sha, size = row
            if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
                raise ManifestError(f"{path}:{line_no}: git_blob_sha1 {sha!r} is not 40 hex digits")
            if not size.isdigit():
                raise ManifestError(f"{path}:{line_no}: bytes {size!r} is not a non-negative integer")
            if (source, file_path) in seen:
                raise ManifestError(f"{path}:{line_no}: duplicate entry {source}/{file_path}")
            seen.add((source, file_path))
            entries.append(ManifestEntry(source, repo, commit, file_path, sha, int(size)))
    return entries


class DataFiles:
    """Verified local copies of pinned files, looked up by (source, path in repository)."""

    def __init__(self, files: dict[tuple[str, str], Path]):
        self._files = dict(files)

    def local_path(self, source: str, path: str) -> Path:
        try:
            return self._files[(source, path)]
        except KeyError:
            raise MissingFileError(f"{source}/{path} is not in the manifest") from None

    def paths(self, source: str, prefix: str = "", suffix: str = "") -> list[str]:
        """The manifest paths of ``source`` that start with ``prefix`` and end with ``suffix``, sorted."""
        return sorted(p for s, p in self._files if s == source and p.startswith(prefix) and p.endswith(suffix))

    def sources(self) -> list[str]:
        return sorted({s for s, _ in self._files})

    def only(self, *sources: str) -> DataFiles:
        """The files of ``sources`` alone."""
        return DataFiles({key: local for key, local in self._files.items() if key[0] in sources})

    def read_bytes(self, source: str, path: str) -> bytes:
        return _read_content(self.local_path(source, path))

    def open_text(self, source: str, path: str) -> io.TextIOWrapper:
        return io.TextIOWrapper(io.BytesIO(self.read_bytes(source, path)), encoding="utf-8", newline="")


def _read_content(local: Path) -> bytes:
    data = local.read_bytes()
    return gzip.decompress(data) if local.suffix == ".gz" else data


def _verify(entry: ManifestEntry, content: bytes, where: Path | str) -> None:
    actual = git_blob_sha1(content)
    if actual != entry.git_blob_sha1:
        raise ChecksumError(
            f"checksum mismatch for {entry.source}/{entry.path} ({where}): "
            f"expected git blob {entry.git_blob_sha1}, got {actual}"
        )


class _VerifiedStamps:
    """Remembers files already verified (by size and mtime) so reruns skip re-hashing."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._stamps: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._stamps = {}

    @staticmethod
    def _key(local: Path, entry: ManifestEntry) -> str:
        return f"{local.resolve()}|{entry.git_blob_sha1}"

    def is_verified(self, local: Path, entry: ManifestEntry) -> bool:
        st = local.stat()
        return self._stamps.get(self._key(local, entry)) == [st.st_size, st.st_mtime_ns]

    def mark(self, local: Path, entry: ManifestEntry) -> None:
        st = local.stat()
        self._stamps[self._key(local, entry)] = [st.st_size, st.st_mtime_ns]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._stamps))
        os.replace(tmp, self.path)


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - pinned https URL
        return response.read()


def fetch(
    entries: Iterable[ManifestEntry],
    cache_dir: Path,
    mirror: Path | None = None,
    base_url: str = "https://raw.githubusercontent.com",
    timeout: float = 60.0,
    on_file: Callable[[ManifestEntry], None] | None = None,
) -> DataFiles:
    """Make every manifest entry available locally and verified.

    With ``mirror``, files are read in place (``<mirror>/<source>/<path>`` or the same
    path with ``.gz``); nothing is written into the mirror. Without it, files are
    downloaded from ``base_url`` at their pinned commits into ``cache_dir``; a file
    already in the cache with the right checksum is not downloaded again.
    """
    stamps = _VerifiedStamps(cache_dir / "verified.json")
    files: dict[tuple[str, str], Path] = {}
    for entry in entries:
        if mirror is not None:
            local = _mirror_path(mirror, entry)
        else:
            local = cache_dir / "sources" / entry.source / entry.path
            if not local.is_file():
                _download_to(entry, local, base_url, timeout)
        if not stamps.is_verified(local, entry):
            _verify(entry, _read_content(local), local)
            stamps.mark(local, entry)
        files[(entry.source, entry.path)] = local
        if on_file is not None:
            on_file(entry)
    stamps.save()
    return DataFiles(files)


def _mirror_path(mirror: Path, entry: ManifestEntry) -> Path:
    """``<mirror>/<source>/<path>``, or the file name alone under ``<source>/`` (a flattened mirror such as
    shared/paraphrase); either may be gzipped. The checksum check that follows makes sure it is the file."""
    plain = mirror / entry.source / entry.path
    flat = mirror / entry.source / Path(entry.path).name
    for candidate in (plain, plain.with_name(plain.name + ".gz"), flat, flat.with_name(flat.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"{entry.source}/{entry.path} not found in mirror {mirror} (looked for {plain}[.gz] "
                           f"and {flat}[.gz])")


def _download_to(entry: ManifestEntry, local: Path, base_url: str, timeout: float) -> None:
    url = entry.url(base_url)
    try:
        content = _download(url, timeout)
    except OSError as exc:
        raise MissingFileError(f"could not download {entry.source}/{entry.path} from {url}: {exc}") from exc
    _verify(entry, content, url)
    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=local.parent, delete=False) as tmp:
        tmp.write(content)
    shutil.move(tmp.name, local)
