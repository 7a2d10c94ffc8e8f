"""notebooks/02_train_and_compare_routers.ipynb top to bottom on a slice of the real files.

The outcomes table is built from the mini mirror (fixtures cut from the real public files) the
way `router-ml datasets prepare` builds it; the notebook's parameters are overridden in a cell
injected after its parameters cell (as papermill does), and every path it reads or writes points
into the test's temporary directory through the environment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import polars as pl
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from router_ml.config import PROJECT_ROOT
from router_ml.data.prepare import prepare
from router_ml.data.report import ImportReport

NOTEBOOK = PROJECT_ROOT / "notebooks" / "02_train_and_compare_routers.ipynb"
MANIFEST = PROJECT_ROOT / "datasets" / "manifest.tsv"  # the notebook records its checksum when it exists
SOURCE = "routerbench"  # 73 prompts x 11 models in the mini mirror, nearly all complete
MIN_PROMPTS = 50
OVERRIDES = f"""
SOURCES = [{SOURCE!r}]
MIN_PROMPTS = {MIN_PROMPTS}
N_TRIALS = 3
NAME = "nb-test-router"
import sys
print("kernel python:", sys.executable)
"""


@pytest.fixture(scope="module")
def outcomes_path(mini_files, tmp_path_factory) -> Path:
    table = prepare(mini_files, ImportReport(), encoder=None)
    rows = table.filter(pl.col("source") == SOURCE, pl.col("quality").is_not_null())
    per_model = rows.group_by("model").len()
    assert rows["prompt_id"].n_unique() >= MIN_PROMPTS
    assert per_model.filter(pl.col("len") >= MIN_PROMPTS).height >= 2
    path = tmp_path_factory.mktemp("outcomes") / "outcomes.parquet"
    table.write_parquet(path)
    return path


def _parameterized() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = new_code_cell(OVERRIDES.strip())
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    return nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])  # the first code cell holds the parameters
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_trains_compares_saves_and_registers(outcomes_path, static_encoder_dir, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "bundle"
    for key, value in {"ROUTER_ML_OUTCOMES_PATH": outcomes_path, "ROUTER_ML_MLFLOW_URI": uri,
                       "ROUTER_ML_MLFLOW_ARTIFACTS": tmp_path / "artifacts",
                       "ROUTER_ML_STATIC_ENCODER": static_encoder_dir, "ROUTER_ML_NOTEBOOK_OUT": out,
                       "ROUTER_ML_NOTEBOOK_REPORTS": tmp_path / "reports"}.items():
        monkeypatch.setenv(key, str(value))  # the kernel inherits this process's environment
    monkeypatch.delenv("ROUTER_ML_MANIFEST", raising=False)  # the project's manifest: its checksum goes in the bundle
    nb = _parameterized()
    started = time.perf_counter()
    # IPC sockets under tmp_path, not TCP ports: no port race with other kernels started meanwhile.
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel-ipc"))
    NotebookClient(nb, km=kernel, timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook ran in {time.perf_counter() - started:.1f} s")

    errors = [output for cell in nb.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors, errors
    text = _text(nb)
    assert f"kernel python: {sys.executable}" in text  # the venv's interpreter, not one found on PATH
    assert any("image/png" in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))
    assert (tmp_path / "reports" / "cost_quality_test.png").stat().st_size > 0

    meta = json.loads((out / "bundle.json").read_text())
    assert (out / "predictors.joblib").is_file()
    assert meta["name"] == "nb-test-router" and meta["models"] and len(meta["models"]) >= 2
    assert meta["encoder"]["id"] == "minilm-static-64"
    assert meta["config"]["sources"] == [SOURCE] and meta["config"]["router"] == meta["router"]["kind"]
    for key in ("aiq", "zero_aiq", "oracle_aiq", "gap_closed", "savings_at_95", "brier", "target"):
        assert key in meta["metrics"], key
    assert meta["metrics"]["target"]["kind"] == "quality_share" and meta["metrics"]["target"]["target"] == 0.95
    assert meta["data"]["prompts"]["validation"] > 0 and meta["data"]["prompts"]["test"] > 0
    # The kept router is the better one on validation, not on test.
    gaps = meta["router"]["selection"]
    assert set(gaps) == {"linear", "mf"}
    finite = {kind: gap for kind, gap in gaps.items() if gap == gap}
    assert not finite or gaps[meta["router"]["kind"]] == max(finite.values())

    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name = 'nb-test-router'")
    assert [str(v.version) for v in versions] == ["1"]
    run = client.get_run(versions[0].run_id)
    assert run.data.params["bundle.version"] == meta["version"]
    assert run.data.metrics["aiq"] == pytest.approx(meta["metrics"]["aiq"])
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")}
    assert logged == {"plots/cost_quality_test.png"}

    # The notebook writes the bundle metadata itself (to save the very router it compared): it must
    # hold every field `train.run` writes, so `router-ml evaluate` and serving read both alike.
    reference = run_meta(outcomes_path, static_encoder_dir, tmp_path / "reference")
    assert set(meta) == set(reference)
    for key in ("config", "encoder", "router", "calibration", "data", "metrics"):
        assert set(meta[key]) == set(reference[key]), key
    assert meta["encoder"] == reference["encoder"] and meta["catalog"] == reference["catalog"]


def run_meta(outcomes_path: Path, static_encoder_dir: Path, out: Path) -> dict:
    """The metadata `train.run` (what `router-ml train` calls) writes for the same slice."""
    from router_ml.bundle import file_sha256
    from router_ml.embed import StaticEncoder
    from router_ml.train import TrainConfig, run

    config = TrainConfig(router="linear", sources=[SOURCE], min_prompts=MIN_PROMPTS, n_trials=0)
    checksums = {"outcomes_sha256": file_sha256(outcomes_path), "manifest_sha256": file_sha256(MANIFEST)}
    return run(config, pl.read_parquet(outcomes_path), StaticEncoder(static_encoder_dir), out,
               data_checksums=checksums).meta

