"""Each importer on small fixtures cut from the real files, checked against the files themselves."""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile

import polars as pl
import pytest

from router_ml.data.importers import llmrouter, mmlu_pro, routellm, routerbench, zeroeval
from router_ml.data.report import ImportReport
from router_ml.data.sources import DataFiles, fetch, load_manifest

import mini_mirror


def _csv_records(files: DataFiles, source: str, path: str) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    return list(csv.DictReader(files.open_text(source, path)))


def test_routellm_correctness_matches_the_csv(mini_files, report):
    rows = routellm.load(mini_files, report)
    path = "routellm/evals/gsm8k/gsm8k_responses.csv"
    records = _csv_records(mini_files, "routellm", path)
    gsm = rows.filter(pl.col("task") == "gsm8k")
    assert gsm.height == 2 * len(records)
    for record in records[:5]:
        for model in routellm.MODELS:
            got = gsm.filter((pl.col("prompt") == record["prompt"]) & (pl.col("model") == model))
            assert got["quality"].to_list() == [1.0 if record[model] == "True" else 0.0]
            assert got["response"].to_list() == [record[f"{model}_response"]]
    assert set(rows["split"]) == {"test"}
    assert not report.skips


def test_routellm_flags_contaminated_prompts(mini_files, report):
    rows = routellm.load(mini_files, report)
    for task, task_dir in (("gsm8k", "gsm8k"), ("mt_bench", "mt_bench"), ("mmlu", "mmlu")):
        listed = {json.loads(line)["eval_prompt"].strip()
                  for line in mini_files.open_text("routellm", f"routellm/evals/{task_dir}/contaminated_prompts.jsonl")}
        part = rows.filter(pl.col("task") == task)
        expected = {p for p in part["prompt"] if p.strip() in listed}
        flagged = set(part.filter(pl.col("flags").list.contains("contaminated"))["prompt"])
        assert flagged == expected
    # The first GSM8K test question and MT-Bench question 81 are on RouteLLM's lists, so the check is not vacuous.
    flagged = rows.filter(pl.col("flags").list.contains("contaminated"))
    assert flagged.filter(pl.col("task") == "gsm8k")["prompt"].str.starts_with("Janet").any()
    assert flagged.filter(pl.col("task") == "mt_bench")["prompt"].str.contains("Hawaii").any()
    assert rows.height == rows.unique(["prompt_id", "model"]).height, "flagged rows are kept, not dropped"


def test_routellm_mt_bench_mean_judge_score_over_both_turns(mini_files, report):
    rows = routellm.load(mini_files, report).filter(pl.col("task") == "mt_bench")
    assert rows.height == 2 * len(mini_mirror.MT_BENCH_QUESTIONS)
    judgements = [json.loads(line) for line in mini_files.open_text("routellm", "routellm/evals/mt_bench/judgements.jsonl")]
    for row in rows.iter_rows(named=True):
        scores = [j["score"] for j in judgements if j["model"] == row["model"] and
                  routellm.prompt_id("routellm", "mt_bench", str(j["question_id"])) == row["prompt_id"]]
        assert len(scores) == 2
        assert row["quality"] == pytest.approx((sum(scores) / 2 - 1) / 9)
        conversation = json.loads(row["messages"])
        assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
        assert conversation[0]["content"] == row["prompt"]
        assert row["response"] and conversation[1]["content"] == row["response"]
        assert row["billed_input_text"].count(row["prompt"]) == 2  # turn 2 resends the first question


def test_routerbench_keeps_billed_costs_and_split(mini_files, report):
    rows = routerbench.load(mini_files, report)
    assert rows["model"].n_unique() == 11
    assert set(rows["split"]) == {"train", "test"}
    assert (rows["cost_source"] == "billed").all()
    path = "datasets/routerbench_zs/mbpp_test.csv"
    record = _csv_records(mini_files, "routerbench", path)[0]
    row = rows.filter((pl.col("prompt_id") == routerbench.prompt_id("routerbench", "mbpp", record["sample_id"]))
                      & (pl.col("model") == "gpt-4-1106-preview")).row(0, named=True)
    assert row["cost_usd"] == float(record["gpt-4-1106-preview|total_cost"])
    assert row["quality"] == float(record["gpt-4-1106-preview"])
    assert row["prompt"] == "Write a python function to identify non-prime numbers."


def test_routerbench_duplicate_sample_is_skipped_and_reported(mini_files, report):
    rows = routerbench.load(mini_files, report)
    dupes = [s for s in report.skips if s.reason.startswith("duplicate sample_id")]
    assert len(dupes) == 1 and mini_mirror.ROUTERBENCH_DUPLICATE in dupes[0].reason
    assert dupes[0].file.endswith("arc_challenge_train.csv") and dupes[0].line is not None
    kept = rows.filter(pl.col("prompt_id") == routerbench.prompt_id("routerbench", "arc-challenge",
                                                                  mini_mirror.ROUTERBENCH_DUPLICATE))
    assert kept.height == 11 and kept["quality"].null_count() < 11


def test_llmrouter_scores_tasks_and_split(mini_files, report):
    rows = llmrouter.load(mini_files, report)
    items = json.loads(mini_files.read_bytes("llmrouter", "data/dcrouter_preprocessed/train.json"))
    assert rows.filter(pl.col("split") == "train").height == sum(len(i["scores"]) for i in items)
    first = rows.filter(pl.col("prompt") == items[0]["question"])
    assert dict(zip(first["model"], first["quality"])) == pytest.approx(items[0]["scores"])
    assert first["task"].unique().to_list() == ["agentverse-logicgrid"]
    assert rows["response"].null_count() == rows.height


def test_zeroeval_grades_outputs(mini_files, report):
    rows = zeroeval.load(mini_files, report)
    assert set(rows["task"]) == {"gsm8k", "math_l5", "cruxeval"}
    assert set(rows["model"]) == set(mini_mirror.ZEROEVAL_MODELS)
    janet = rows.filter((pl.col("task") == "gsm8k") & pl.col("prompt").str.starts_with("Janet")
                        & (pl.col("model") == "gpt-4o-2024-05-13"))
    assert janet["quality"].to_list() == [1.0]  # its JSON answer is 18, the gold answer is 18
    assert janet["billed_input_text"][0].startswith("\n## Question:")
    no_answer = rows.filter(pl.col("flags").list.contains("no_answer"))
    assert (no_answer["quality"] == 0.0).all()


def test_zeroeval_reproduces_published_accuracies(real_files):
    """Every model of GSM8K, MATH-L5 and CRUX within 1 point of ZeroEval's summary.json."""
    rows = zeroeval.load(real_files, ImportReport())
    table = zeroeval.reproduction(real_files, rows)
    assert table["published"].null_count() == 0, table.filter(pl.col("published").is_null())
    assert table.height == 44 + 43 + 51
    worst = table.group_by("task").agg(pl.col("diff").abs().max().alias("max_abs_diff"))
    assert (worst["max_abs_diff"] <= 1.0).all(), worst


def test_mmlu_pro_null_prediction_counts_wrong(mini_files, report):
    rows = mmlu_pro.load(mini_files, report)
    assert set(rows["model"]) == set(mini_mirror.MMLU_PRO_MODELS)
    null_pred = rows.filter(pl.col("flags").list.contains("no_answer"))
    assert null_pred.height > 0 and (null_pred["quality"] == 0.0).all()
    assert any("predictions null" in note for note in report.notes["mmlu_pro"])
    with zipfile.ZipFile(io.BytesIO(mini_files.read_bytes("mmlu_pro", mini_files.paths("mmlu_pro")[0]))) as archive:
        item = json.loads(archive.read(archive.namelist()[0]))[0]
    prompt = rows.filter(pl.col("prompt_id") == mmlu_pro.prompt_id("mmlu_pro", "mmlu_pro", str(item["question_id"])))["prompt"][0]
    assert prompt.startswith(item["question"].strip())
    assert prompt.count("\n(") == len(mmlu_pro.parse_options(item["options"])) and "\n(A) " in prompt


def _rewrite(mini, tmp_path, source, path, transform):
    """A copy of the mini mirror with one file changed, and a manifest that pins the change."""
    import shutil

    from router_ml.data.sources import git_blob_sha1

    manifest, mirror = mini
    shutil.copytree(mirror, tmp_path / "mirror")
    target = tmp_path / "mirror" / source / path
    content = transform(target.read_bytes())
    target.write_bytes(content)
    lines = manifest.read_text().splitlines()
    fixed = []
    for line in lines:
        fields = line.split("\t")
        if fields[0] == source and fields[3] == path:
            fields[4], fields[5] = git_blob_sha1(content), str(len(content))
        fixed.append("\t".join(fields))
    (tmp_path / "manifest.tsv").write_text("\n".join(fixed) + "\n")
    return fetch(load_manifest(tmp_path / "manifest.tsv"), tmp_path / "cache", mirror=tmp_path / "mirror")


def test_malformed_csv_value_is_a_counted_skip_with_file_and_line(mini, tmp_path):
    path = "routellm/evals/gsm8k/gsm8k_responses.csv"

    def corrupt(content: bytes) -> bytes:
        text = content.decode()
        reader = list(csv.reader(io.StringIO(text, newline="")))
        reader[3][2] = "maybe"  # the gpt-4 column of the third record
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(reader)
        return out.getvalue().encode()

    files = _rewrite(mini, tmp_path, "routellm", path, corrupt)
    report = ImportReport()
    rows = routellm.load(files, report)
    assert len(report.skips) == 1
    skip = report.skips[0]
    assert skip.file == path and skip.line is not None and "maybe" in skip.reason
    records = _csv_records(files, "routellm", path)
    assert rows.filter(pl.col("task") == "gsm8k").height == 2 * len(records) - 1


def test_malformed_json_file_is_an_error_naming_it(mini, tmp_path):
    path = "data/dcrouter_preprocessed/test.json"
    files = _rewrite(mini, tmp_path, "llmrouter", path, lambda c: c[:-10])
    with pytest.raises(ValueError, match="llmrouter/data/dcrouter_preprocessed/test.json"):
        llmrouter.load(files, ImportReport())


def test_malformed_jsonl_line_is_a_counted_skip_with_file_and_line(mini, tmp_path):
    path = "routellm/evals/mt_bench/judgements.jsonl"
    files = _rewrite(mini, tmp_path, "routellm", path, lambda c: c + b'{"question_id": 81, "model": "x"\n')
    report = ImportReport()
    routellm.load(files, report)
    lines = files.read_bytes("routellm", path).decode().count("\n")
    assert [(s.file, s.line) for s in report.skips] == [(path, lines)]
    assert report.skips[0].reason.startswith("malformed judgement")
