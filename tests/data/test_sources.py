"""Manifest, mirror and download: checksums are verified and errors name the file."""

from __future__ import annotations

import gzip
import http.server
import threading
from pathlib import Path

import pytest

from router_ml.data.sources import (
    ChecksumError, ManifestError, MissingFileError, fetch, git_blob_sha1, load_manifest,
)


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_project_manifest_pins_every_source():
    from conftest import MANIFEST

    entries = load_manifest(MANIFEST)
    assert {e.source for e in entries} == {"routellm", "routerbench", "llmrouter", "zeroeval", "mmlu_pro"}
    assert all(len(e.commit) == 40 for e in entries)


def test_mirror_fetch_verifies_real_files(mini_files):
    assert set(mini_files.sources()) == {"routellm", "routerbench", "llmrouter", "zeroeval", "mmlu_pro"}
    # zeroeval files are gzipped in the mirror; readers see the original bytes.
    path = mini_files.paths("zeroeval", "result_dirs/gsm/", ".json")[0]
    assert mini_files.local_path("zeroeval", path).suffix == ".gz"
    assert mini_files.read_bytes("zeroeval", path).startswith(b"[")


def _copy_mirror(mini, tmp_path) -> tuple[Path, Path]:
    import shutil

    manifest, mirror = mini
    shutil.copytree(mirror, tmp_path / "mirror")
    return manifest, tmp_path / "mirror"


def test_checksum_mismatch_names_the_file(mini, tmp_path):
    manifest, mirror = _copy_mirror(mini, tmp_path)
    target = mirror / "llmrouter" / "data" / "dcrouter_preprocessed" / "test.json"
    target.write_bytes(target.read_bytes() + b" ")
    with pytest.raises(ChecksumError, match="llmrouter/data/dcrouter_preprocessed/test.json"):
        fetch(load_manifest(manifest), tmp_path / "cache", mirror=mirror)


def test_missing_mirror_file_names_the_file(mini, tmp_path):
    manifest, mirror = _copy_mirror(mini, tmp_path)
    (mirror / "routellm" / "routellm" / "evals" / "gsm8k" / "gsm8k_responses.csv").unlink()
    with pytest.raises(MissingFileError, match="gsm8k_responses.csv"):
        fetch(load_manifest(manifest), tmp_path / "cache", mirror=mirror)


def test_malformed_manifest_names_the_line(tmp_path):
    bad = tmp_path / "manifest.tsv"
    bad.write_text("source\trepo\tcommit\tpath\tgit_blob_sha1\tbytes\nroutellm\tlm-sys/RouteLLM\tabc\tx.csv\tnot-a-sha\t12\n")
    with pytest.raises(ManifestError, match=r"manifest.tsv:2: git_blob_sha1"):
        load_manifest(bad)


class _GitHubRaw(http.server.SimpleHTTPRequestHandler):
    """Serves ``/<repo>/<commit>/<path>`` from a directory, like GitHub's raw file host."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def raw_server(mini):
    manifest, mirror = mini
    files = {}
    for e in load_manifest(manifest):
        local = mirror / e.source / e.path
        content = local.read_bytes() if local.is_file() else gzip.decompress(local.with_name(local.name + ".gz").read_bytes())
        files[f"/{e.repo}/{e.commit}/{e.path}"] = content
    _GitHubRaw.files, _GitHubRaw.requests = files, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GitHubRaw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", manifest
    server.shutdown()


def test_download_fetch_caches_and_verifies(raw_server, tmp_path):
    base, manifest = raw_server
    entries = load_manifest(manifest)
    files = fetch(entries, tmp_path / "cache", base_url=base)
    assert len(_GitHubRaw.requests) == len(entries)
    entry = entries[0]
    assert git_blob_sha1(files.read_bytes(entry.source, entry.path)) == entry.git_blob_sha1
    fetch(entries, tmp_path / "cache", base_url=base)
    assert len(_GitHubRaw.requests) == len(entries), "cached files must not be downloaded again"


def test_download_with_wrong_content_is_rejected(raw_server, tmp_path):
    base, manifest = raw_server
    entry = load_manifest(manifest)[0]
    _GitHubRaw.files[f"/{entry.repo}/{entry.commit}/{entry.path}"] += b"tampered"
    with pytest.raises(ChecksumError, match=entry.path):
        fetch([entry], tmp_path / "cache", base_url=base)
    assert not (tmp_path / "cache" / "sources" / entry.source / entry.path).exists()
