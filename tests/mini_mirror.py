"""Small fixtures cut from the real public files: the first records of each file.

The cut files are laid out like the real mirror (gzipped where the mirror gzips) and
described by a manifest with their own checksums, so the tests run the same fetch,
verify and import path as `make run`, on a few hundred rows instead of 400,000.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

from router_ml.data.sources import MANIFEST_COLUMNS, git_blob_sha1, load_manifest

ROUTERBENCH_DUPLICATE = "arc-challenge.val.208"  # a sample id RouterBench lists twice, once without scores


def _cut_csv(content: bytes, keep) -> bytes:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(content.decode("utf-8"), newline=""))
    header = next(reader)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for index, row in enumerate(reader):
        if keep(index, dict(zip(header, row))):
            writer.writerow(row)
    return out.getvalue().encode("utf-8")


def _cut_jsonl(content: bytes, keep) -> bytes:
    lines = [line for line in content.decode("utf-8").splitlines() if line.strip()]
    return ("\n".join(line for i, line in enumerate(lines) if keep(i, json.loads(line))) + "\n").encode("utf-8")


def _cut_json_list(content: bytes, n: int) -> bytes:
    return json.dumps(json.loads(content)[:n]).encode("utf-8")


def _cut_zip(content: bytes, n: int) -> bytes:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        name = archive.namelist()[0]
        items = json.loads(archive.read(name))[:n]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, json.dumps(items))
    return out.getvalue()


MT_BENCH_QUESTIONS = {81, 82, 101, 111, 141}  # 81 is on RouteLLM's contaminated list
ZEROEVAL_MODELS = ("gpt-4o-2024-05-13", "Meta-Llama-3.1-8B-Instruct", "gemma-2-2b-it")
MMLU_PRO_MODELS = ("gemini-1.5-flash-002", "Mistral-7B-Instruct-v0.2")


def _cut(source: str, path: str, content: bytes) -> bytes | None:
    """The fixture version of one real file, or None to leave the file out."""
    if source == "routellm":
        if "/mmlu/responses/" in path:
            return _cut_csv(content, lambda i, r: i < 15) if path.endswith(("anatomy.csv", "astronomy.csv")) else None
        if path.endswith("gsm8k_responses.csv"):
            return _cut_csv(content, lambda i, r: i < 25)
        if path.endswith("question.jsonl"):
            return _cut_jsonl(content, lambda i, r: r["question_id"] in MT_BENCH_QUESTIONS)
        if path.endswith("judgements.jsonl"):
            return _cut_jsonl(content, lambda i, r: r["question_id"] in MT_BENCH_QUESTIONS)
        return content
    if source == "routerbench":
        return _cut_csv(content, lambda i, r: i < 12 or r["sample_id"] == ROUTERBENCH_DUPLICATE)
    if source == "llmrouter":
        if path.endswith(".json"):
            return _cut_json_list(content, 40)
        return content
    if source == "zeroeval":
        if path.endswith(".summary.json"):
            return content
        return _cut_json_list(content, 30) if path.rsplit("/", 1)[-1].removesuffix(".json") in ZEROEVAL_MODELS else None
    if source == "mmlu_pro":
        return _cut_zip(content, 30) if any(f"_{m}_" in path for m in MMLU_PRO_MODELS) else None
    raise ValueError(f"no fixture rule for source {source}")


def build(real_mirror: Path, real_manifest: Path, out: Path) -> Path:
    """Write a mini mirror under ``out/mirror`` and its manifest ``out/manifest.tsv``; return the manifest."""
    rows = []
    for entry in load_manifest(real_manifest):
        stored = real_mirror / entry.source / entry.path
        gz = not stored.is_file()
        raw = gzip.decompress((stored.with_name(stored.name + ".gz")).read_bytes()) if gz else stored.read_bytes()
        cut = _cut(entry.source, entry.path, raw)
        if cut is None:
            continue
        target = out / "mirror" / entry.source / (entry.path + (".gz" if gz else ""))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(cut, mtime=0) if gz else cut)
        rows.append([entry.source, entry.repo, entry.commit, entry.path, git_blob_sha1(cut), str(len(cut))])
    manifest = out / "manifest.tsv"
    manifest.write_text("\n".join("\t".join(r) for r in [list(MANIFEST_COLUMNS), *rows]) + "\n")
    return manifest
