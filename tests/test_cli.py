"""`router-ml datasets prepare` and `datasets replay` end to end on fixtures cut from the real files."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from router_ml.cli import app
from router_ml.config import get_settings
from router_ml.data import schema


@pytest.fixture
def env(mini, tmp_path, monkeypatch, dedup_static_encoder_dir):
    manifest, mirror = mini
    monkeypatch.setenv("ROUTER_ML_MANIFEST", str(manifest))
    monkeypatch.setenv("ROUTER_ML_STATIC_ENCODER", str(dedup_static_encoder_dir))  # never the checkout's models/
    monkeypatch.setenv("ROUTER_ML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ROUTER_ML_DATA_MIRROR", raising=False)
    get_settings.cache_clear()
    yield mirror
    get_settings.cache_clear()


def test_prepare_builds_the_table_and_prints_every_source(env, tmp_path):
    out = tmp_path / "outcomes.parquet"
    result = CliRunner().invoke(app, ["datasets", "prepare", "--mirror", str(env), "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    schema.validate(table)
    assert set(table["source"]) == {"routellm", "routerbench", "llmrouter", "zeroeval", "mmlu_pro"}
    for source in ("routellm", "routerbench", "llmrouter", "zeroeval", "mmlu_pro"):
        assert f"{source}: mean quality and cost per model" in result.output
    assert "skipped rows: 1" in result.output  # RouterBench's duplicate sample id
    assert "duplicate sample_id" in result.output
    skipped = pl.read_csv(tmp_path / "outcomes.skipped.tsv", separator="\t")
    assert skipped.height == 1 and skipped["source"][0] == "routerbench" and skipped["line"][0] > 0
    # The GSM8K test questions are in routellm and zeroeval: the copies share one group.
    janet = table.filter(pl.col("prompt").str.starts_with("Janet’s ducks lay 16 eggs"))
    assert set(janet["source"]) == {"routellm", "zeroeval"}
    assert janet["group_id"].n_unique() == 1


def test_fetch_reports_a_checksum_error_clearly(env, tmp_path):
    import shutil

    shutil.copytree(env, tmp_path / "mirror")
    victim = next((tmp_path / "mirror" / "llmrouter").rglob("*.jsonl"))
    victim.write_text("tampered\n")
    result = CliRunner().invoke(app, ["datasets", "fetch", "--mirror", str(tmp_path / "mirror")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output and victim.name in result.output


def test_replay_builds_routerbenchs_slice_which_the_replay_provider_serves(env, tmp_path, monkeypatch):
    from router_ml.data.importers import routerbench
    from router_ml.serve.main import providers_for

    out = tmp_path / "replay.parquet"
    result = CliRunner().invoke(app, ["datasets", "replay", "--mirror", str(env), "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    schema.validate(table)
    assert set(table["source"]) == {"routerbench"} and set(table["model"]) == set(routerbench.MODELS)
    assert table["response"].null_count() == 0 and table["output_tokens"].min() >= 0
    assert "skipped row (1)" in result.output  # RouterBench's duplicate sample id, counted and listed
    assert pl.read_csv(tmp_path / "replay.skipped.tsv", separator="\t").height == 1

    # Without an outcomes table the replay provider answers from the slice; without either it says what to run.
    monkeypatch.setenv("ROUTER_ML_OUTCOMES_PATH", str(tmp_path / "absent.parquet"))
    monkeypatch.setenv("ROUTER_ML_REPLAY_PATH", str(out))
    get_settings.cache_clear()
    assert set(providers_for(list(routerbench.MODELS), get_settings())) == set(routerbench.MODELS)
    monkeypatch.setenv("ROUTER_ML_REPLAY_PATH", str(tmp_path / "absent-too.parquet"))
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="router-ml datasets replay"):
        providers_for(list(routerbench.MODELS), get_settings())
