"""Labeled paraphrase pairs (PAWS-Wiki dev and test), pinned in datasets/paraphrase.tsv and fetched like the
outcome datasets: downloaded from GitHub at the pinned commit, or read from a mirror (shared/paraphrase),
checksums verified either way. They measure the semantic cache (benchmarks/semantic_cache.py)."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from router_ml.data.sources import fetch, load_manifest


def paws_files(manifest: Path, cache_dir: Path, mirror: Path | None = None) -> dict[str, Path]:
    """{"dev": path, "test": path} of the pinned PAWS-Wiki files, verified."""
    entries = load_manifest(manifest)
    files = fetch(entries, cache_dir, mirror=mirror)
    return {Path(e.path).stem: files.local_path(e.source, e.path) for e in entries}


def load_pairs(path: Path) -> tuple[list[str], list[str], list[int]]:
    """(sentence1, sentence2, label) columns of a PAWS TSV (label 1: paraphrase); a bad label names its row."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    first, second, labels = [], [], []
    for row_no, row in enumerate(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"), start=2):
        if row.get("label") not in ("0", "1"):
            raise ValueError(f"{path}:{row_no}: label must be 0 or 1, got {row.get('label')!r}")
        first.append(row["sentence1"])
        second.append(row["sentence2"])
        labels.append(int(row["label"]))
    return first, second, labels
