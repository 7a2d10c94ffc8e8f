"""Normalization, group ids and near-duplicates on real cross-source copies."""

from __future__ import annotations


import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_ml.data.dedup import RULES, boilerplate_lines, dedup_view, group_ids, rule_for, similar_pairs
from router_ml.data.ids import normalize_text
from router_ml.data.importers import llmrouter, mmlu_pro, routellm, routerbench
from router_ml.data.report import ImportReport
from router_ml.embed import MiniLMEncoder, StaticEncoder


@pytest.fixture(scope="module", params=["static", "minilm"])
def dedup_encoder(request):
    """Each encoder that has a checked near-duplicate rule: the static one `make data` uses and MiniLM."""
    if request.param == "minilm":
        return MiniLMEncoder()
    return StaticEncoder(request.getfixturevalue("dedup_static_encoder_dir"))


def test_every_encoder_with_a_rule_is_tested_and_others_are_refused(dedup_encoder):
    assert dedup_encoder.encoder_id in RULES and len(RULES) == 2
    with pytest.raises(ValueError, match="minilm-static-64"):
        rule_for("minilm-static-64")


@given(st.text())
def test_normalized_text_normalizes_to_itself(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=25), st.randoms())
def test_group_ids_do_not_depend_on_order(prompts, rnd):
    first = dict(group_ids(prompts, encoder=None).iter_rows())
    shuffled = list(prompts)
    rnd.shuffle(shuffled)
    second = dict(group_ids(shuffled, encoder=None).iter_rows())
    assert first == second


@given(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=25))
def test_group_ids_do_not_depend_on_other_prompts(prompts):
    """Adding unrelated prompts never changes the id of an existing exact-duplicate group."""
    alone = dict(group_ids(prompts[:1], encoder=None).iter_rows())
    together = dict(group_ids(prompts, encoder=None).iter_rows())
    if all(normalize_text(p) != normalize_text(prompts[0]) for p in prompts[1:]):
        assert together[prompts[0]] == alone[prompts[0]]


def test_exact_duplicates_after_normalization_share_a_group():
    groups = dict(group_ids(["What is  2+2?", "what is 2+2?\n", "What is 3+3?"], encoder=None).iter_rows())
    assert groups["What is  2+2?"] == groups["what is 2+2?\n"] != groups["What is 3+3?"]


def test_dedup_view_drops_the_shared_few_shot_preamble(mini_files, report):
    """RouterBench's ARC prompts share ~1,500 characters of few-shot examples; the view keeps the question."""
    prompts = routerbench.load(mini_files, report).filter(pl.col("task") == "arc-challenge")["prompt"].unique().to_list()
    assert all(p.startswith("George wants to warm his hands") for p in prompts)  # the shared first example
    boilerplate = boilerplate_lines(prompts, min_prompts=5)
    views = [dedup_view(p, boilerplate) for p in prompts]
    assert len(set(views)) == len(prompts)
    assert not any("george wants to warm his hands" in v for v in views)
    for prompt, view in zip(prompts, views):
        question = prompt.rsplit("\n\n", 1)[-1].splitlines()[0]
        assert normalize_text(question) in view


def test_similar_pairs_finds_pairs_above_threshold():
    vectors = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert similar_pairs(vectors, 0.95, block=1).tolist() == [[0, 1]]


@pytest.fixture(scope="module")
def real_prompts(real_files):
    report = ImportReport()
    frames = [routellm.load(real_files, report), llmrouter.load(real_files, report)]
    return pl.concat(frames).select("prompt", "source", "task").unique()


def _find(frame: pl.DataFrame, source: str, start: str) -> str:
    found = frame.filter((pl.col("source") == source) & pl.col("prompt").str.starts_with(start))["prompt"].unique()
    assert found.len() == 1, (source, start, found.to_list())
    return found[0]


def test_real_cross_source_near_duplicates_share_a_group(real_prompts, real_files, dedup_encoder):
    """Real copies that differ in options or instructions: MMLU in MMLU-Pro, GSM8K in LLMRouter's MGSM task."""
    frame = real_prompts

    pro = mmlu_pro._model_rows(real_files, mmlu_pro.PREFIX + "Meta-Llama-3_1-70B-Instruct" + mmlu_pro.SUFFIX,
                               "Meta-Llama-3_1-70B-Instruct", ImportReport())
    pro_prompts = [row["prompt"] for row in pro]
    copies = [
        (_find(frame, "routellm", "What is the greatest common factor of 42 and 84?"),
         next(p for p in pro_prompts if p.startswith("What is the greatest common factor of 42 and 84?"))),
        (_find(frame, "routellm", "Which of these famous baseball figures was once acquitted"),
         next(p for p in pro_prompts if p.startswith("Which of these famous baseball figures was once acquitted"))),
        (_find(frame, "routellm", "A basket contains 25 oranges among which 1 is bad"),
         _find(frame, "llmrouter", "A basket contains 25 oranges among which 1 is bad")),
    ]
    # Different questions behind one generic stem must stay apart.
    generic = frame.filter((pl.col("source") == "routellm")
                           & pl.col("prompt").str.starts_with("Which of the following statements is false?\n"))
    distinct = generic["prompt"].unique().sort().head(2).to_list()
    assert len(distinct) == 2
    # Enough real neighbours for boilerplate lines (instructions, templates) to be recognised as such.
    neighbours = [p for task in ("agentverse-mgsm", "mmlu")
                  for p in frame.filter(pl.col("task") == task)["prompt"].unique().sort().head(150)]
    prompts = [p for pair in copies for p in pair] + distinct + neighbours + pro_prompts[:200]
    groups = dict(group_ids(prompts, dedup_encoder).iter_rows())
    for a, b in copies:
        assert a != b and groups[a] == groups[b], (a[:80], b[:80])
    assert groups[distinct[0]] != groups[distinct[1]]
