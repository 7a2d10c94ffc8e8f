"""The benchmark tracks of ``make bench``, as functions over the outcomes table.

Each track trains only on prompts outside its test set and outside the test set's
duplicate groups; every setting is chosen on a validation split of the training data.

- RouteLLM: gpt-4-1106 vs Mixtral on MT-Bench, MMLU and GSM8K. Cross-source routers
  are trained on the other four sources; the own-logs variant runs k-fold within each
  benchmark, as a customer training on its own logs would.
- RouterBench: 11 models, upstream train split -> test split, real USD.
- Modern pool: ZeroEval's models, each benchmark held out in turn, and within the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.linear_model import Ridge

from router_ml.evaluate import (apgr, cost_at_quality, cpt, curve_summary, hull, oracle_curve, pgr_curve,
                                single_model_points)
from router_ml.label import outcome_matrix
from router_ml.routers.policy import best_single_model, calibrate, operating_curve, target_report
from router_ml.split import group_holdout, group_kfold
from router_ml.train import Dataset, brier, build_dataset, complete_rows, fit_cost, make_router, search

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_TASKS = ("mt_bench", "mmlu", "gsm8k")
PUBLISHED = {  # RouteLLM's best router (Ong et al., 2024), trained on ~170k Arena and GPT-4-judge pairs
    "mt_bench": {"cpt50": 0.1340, "apgr": 0.802}, "mmlu": {"cpt50": 0.354}, "gsm8k": {"cpt50": 0.336}}


@dataclass
class PromptFeatures:
    """Features of every prompt of a table, computed once, looked up by prompt id."""

    index: dict[str, int]
    X: np.ndarray

    @classmethod
    def of(cls, outcomes: pl.DataFrame, featurize) -> PromptFeatures:
        prompts = outcomes.select("prompt_id", "prompt").unique("prompt_id", maintain_order=True)
        return cls({p: i for i, p in enumerate(prompts["prompt_id"])}, featurize(prompts["prompt"].to_list()))

    def rows(self, prompt_ids) -> np.ndarray:
        return self.X[[self.index[p] for p in prompt_ids]]


def pair_scores_summary(strong: np.ndarray, weak: np.ndarray, scores: np.ndarray, boot: int = 0, seed: int = 0) -> dict:
    """APGR and CPT(50%)/CPT(80%) of routing the highest scores to the strong model, with optional
    bootstrap 95% intervals over prompts."""
    out = {"apgr": apgr(strong, weak, scores), "cpt50": cpt(strong, weak, scores, 0.5),
           "cpt80": cpt(strong, weak, scores, 0.8), "prompts": len(strong),
           "pgr": [round(float(v), 4) for v in pgr_curve(strong, weak, scores)[1]]}
    if boot:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(boot):
            i = rng.integers(0, len(strong), len(strong))
            if strong[i].mean() > weak[i].mean():
                draws.append(apgr(strong[i], weak[i], scores[i]))
        out["apgr_ci95"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    return out


def difficulty_labels(rows: pl.DataFrame) -> pl.DataFrame:
    """Per prompt, its ``ease``: how much better than usual the models did on it, the mean over
    models of (quality - that model's mean quality in the same source). Learned from 2-60 models
    per prompt, a difficulty score transfers to model pairs never logged together."""
    means = rows.group_by("source", "model").agg(pl.col("quality").mean().alias("model_mean"))
    return (rows.join(means, on=["source", "model"])
            .group_by("prompt_id").agg((pl.col("quality") - pl.col("model_mean")).mean().alias("ease"),
                                       pl.col("group_id").first()))


def _pair(rows: pl.DataFrame, strong: str = STRONG, weak: str = WEAK):
    matrix = outcome_matrix(rows, [strong, weak]).complete()
    return matrix, matrix.quality[:, 0], matrix.quality[:, 1]


def _zscore(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / (reference.std() + 1e-12)


BLEND_WEIGHTS = tuple((a / 4, b / 4, 1 - (a + b) / 4) for a in range(5) for b in range(5 - a))


def choose_blend(strong: np.ndarray, weak: np.ndarray, signals: list[np.ndarray]) -> tuple[float, ...]:
    """Weights (summing to 1, on a grid of quarters) of z-scored signals maximizing APGR on validation;
    equal weights when the validation prompts show no gap between the two models to learn from."""
    if strong.mean() <= weak.mean():
        return tuple(np.full(len(signals), 1 / len(signals)))
    signals = [_zscore(s, s) for s in signals]
    weights = {w[:len(signals) - 1] + (1 - sum(w[:len(signals) - 1]),) for w in BLEND_WEIGHTS}
    return max(sorted(weights), key=lambda w: apgr(strong, weak, sum(wi * s for wi, s in zip(w, signals))))


def blend(weights, signals: list[np.ndarray], references: list[np.ndarray]) -> np.ndarray:
    return sum(w * _zscore(s, r) for w, s, r in zip(weights, signals, references))


def ease_model(rows: pl.DataFrame, features: PromptFeatures, alpha: float) -> Ridge:
    labels = difficulty_labels(rows)
    return Ridge(alpha=alpha).fit(features.rows(labels["prompt_id"]), labels["ease"].to_numpy())


# Validation pairs for the cross-source router: a GPT-4-class model against Mixtral, as logged by
# each other source (on validation groups only).
VALIDATION_PAIRS = (("routerbench", STRONG, "mistralai/mixtral-8x7b-chat"),
                    ("zeroeval", "gpt-4-turbo-2024-04-09", "Mixtral-8x7B-Instruct-v0.1"),
                    ("mmlu_pro", "gemini-1.5-pro-002", "Mixtral-8x7B-Instruct-v0.1"))


def _mean_blend_apgr(pairs: list, weights) -> float:
    """Mean APGR over validation pairs of the blend of each pair's signals (z-scored within the pair)."""
    return float(np.mean([apgr(strong, weak, blend(weights, signals, signals)) for strong, weak, signals in pairs]))


def routellm_cross_source(outcomes: pl.DataFrame, features: PromptFeatures, alphas=(1.0, 10.0, 100.0),
                          boot: int = 200, min_pair_prompts: int = 20) -> dict:
    """Routers trained on the four other sources, scored on RouteLLM's three benchmarks.

    The router blends two signals: predicted prompt difficulty (a ridge regression of
    :func:`difficulty_labels` over every other source) and prompt length. Its alpha and
    blend weights maximize the mean APGR over :data:`VALIDATION_PAIRS` (a GPT-4-class model
    against Mixtral in each other source) on validation groups held out of the training data.
    """
    rows = outcomes.filter(pl.col("quality").is_not_null())
    test_rows = rows.filter(pl.col("source") == "routellm")
    train = rows.filter((pl.col("source") != "routellm")
                        & ~pl.col("group_id").is_in(test_rows["group_id"].unique().to_list()))
    groups = train.select("prompt_id", "group_id").unique("prompt_id")
    fit_idx, val_idx = group_holdout(groups["group_id"].to_list(), 0.2, seed=0)
    val_ids = groups["prompt_id"].gather(val_idx).to_list()
    fit_rows = train.filter(~pl.col("prompt_id").is_in(val_ids))
    val_rows = train.filter(pl.col("prompt_id").is_in(val_ids))
    pairs, described = [], []
    for source, strong_name, weak_name in VALIDATION_PAIRS:
        matrix, strong, weak = _pair(val_rows.filter(pl.col("source") == source), strong_name, weak_name)
        if _unscorable(strong, weak, min_pair_prompts) is None:
            pairs.append((matrix, strong, weak))
            described.append(f"{source}: {strong_name} vs {weak_name}, {len(strong)} prompts")
    if not pairs:
        raise ValueError("no validation pair has enough prompts to choose the cross-source router's settings")
    grid = sorted({w[:1] + (1 - w[0],) for w in BLEND_WEIGHTS})
    validation = {}
    for alpha in alphas:
        model = ease_model(fit_rows, features, alpha)
        scored = [(strong, weak, [-model.predict(features.rows(m.prompts["prompt_id"])), _lengths(m)])
                  for m, strong, weak in pairs]
        weights = max(grid, key=lambda w: _mean_blend_apgr(scored, w))
        validation[alpha] = (_mean_blend_apgr(scored, weights), weights, model)
    alpha = max(validation, key=lambda a: validation[a][0])
    _, weights, model = validation[alpha]
    results = {"validation": "; ".join(described),
               "validation_apgr": {f"alpha={a:g} weights={w}": v for a, (v, w, _) in validation.items()},
               "chosen": {"alpha": alpha, "weights (difficulty, length)": weights}, "tasks": {}}
    for task in ROUTELLM_TASKS:
        matrix, strong, weak = _pair(test_rows.filter(pl.col("task") == task))
        if (reason := _unscorable(strong, weak)) is not None:
            results["tasks"][task] = {"skipped": reason}
            continue
        lengths = _lengths(matrix)
        signals = [-model.predict(features.rows(matrix.prompts["prompt_id"])), lengths]
        routers = {"random": np.random.default_rng(0).random(len(strong)), "length rule": lengths,
                   "router-ml (difficulty + length)": blend(weights, signals, signals)}
        results["tasks"][task] = {name: pair_scores_summary(strong, weak, s, boot if task == "mt_bench" else 0)
                                  for name, s in routers.items()}
        results["tasks"][task]["published RouteLLM"] = PUBLISHED[task]
    return results


def _unscorable(strong: np.ndarray, weak: np.ndarray, min_prompts: int = 20) -> str | None:
    """Why a benchmark cannot be scored as a strong/weak pair (too few prompts, no gap), or None."""
    if len(strong) < min_prompts:
        return f"only {len(strong)} prompts with both outcomes (at least {min_prompts} needed)"
    if strong.mean() <= weak.mean():
        return "the strong model is not better than the weak one on these prompts"
    return None


def _lengths(matrix) -> np.ndarray:
    return matrix.prompts["prompt"].str.len_chars().to_numpy().astype(float)


def routellm_own_logs(outcomes: pl.DataFrame, features: PromptFeatures, k: int = 5, alpha: float = 100.0,
                      ease_alpha: float = 10.0, boot: int = 200) -> dict:
    """k-fold by duplicate group within each RouteLLM benchmark, as a customer training on its own logs.

    Per fold, three signals are blended with weights chosen on an inner validation split of
    the training folds: a ridge regression of the strong model's gain (strong - weak) on
    prompt features, the predicted difficulty learned from every public outcome outside the
    test fold's groups (other models' results on the training folds' questions included),
    and prompt length.
    """
    rows = outcomes.filter(pl.col("quality").is_not_null())
    results = {}
    for task in ROUTELLM_TASKS:
        matrix, strong, weak = _pair(rows.filter((pl.col("source") == "routellm") & (pl.col("task") == task)))
        if (reason := _unscorable(strong, weak, min_prompts=10 * k)) is not None:
            results[task] = {"skipped": reason}
            continue
        X, lengths = features.rows(matrix.prompts["prompt_id"]), _lengths(matrix)
        gain = strong - weak
        groups = matrix.prompts["group_id"].to_list()
        scores = np.empty(len(gain))
        chosen = []
        for train_idx, test_idx in group_kfold(groups, k, seed=0):
            test_groups = {groups[i] for i in test_idx}
            inner_fit, inner_val = (train_idx[i] for i in group_holdout([groups[i] for i in train_idx], 0.2, seed=1))
            outside = rows.filter(~pl.col("group_id").is_in(test_groups))
            ease = ease_model(outside, features, ease_alpha)
            ease_fit = ease_model(outside.filter(~pl.col("group_id").is_in({groups[i] for i in inner_val})),
                                  features, ease_alpha)
            gain_fit = Ridge(alpha=alpha).fit(X[inner_fit], gain[inner_fit])
            val_signals = [gain_fit.predict(X[inner_val]), -ease_fit.predict(X[inner_val]), lengths[inner_val]]
            weights = choose_blend(strong[inner_val], weak[inner_val], val_signals)
            chosen.append(weights)
            gain_all = Ridge(alpha=alpha).fit(X[train_idx], gain[train_idx])
            train_signals = [gain_all.predict(X[train_idx]), -ease.predict(X[train_idx]), lengths[train_idx]]
            test_signals = [gain_all.predict(X[test_idx]), -ease.predict(X[test_idx]), lengths[test_idx]]
            scores[test_idx] = blend(weights, test_signals, train_signals)
        results[task] = {
            "router-ml (gain + difficulty + length, out-of-fold)": pair_scores_summary(strong, weak, scores, boot),
            "length rule": pair_scores_summary(strong, weak, lengths, boot),
            "weights chosen per fold (gain, difficulty, length)": chosen,
        }
    return results


def pool_experiment(fit: Dataset, val: Dataset, test: Dataset, kinds=("linear", "lgbm", "mf"), n_trials: int = 6,
                    quality_share: float = 0.95, seed: int = 0, baselines: dict | None = None) -> dict:
    """Train each router kind (optuna on validation), calibrate its policy on validation to keep
    ``quality_share`` of the best single model, and score it on test. The headline router is the
    one that closes most of the zero-router-to-oracle gap on VALIDATION.

    ``baselines`` maps a name to fixed (validation, test) predicted-quality matrices (e.g. the
    task-name-only router) that go through the same policy and scoring.
    """
    val, test = complete_rows(val), complete_rows(test)
    cost = fit_cost(fit)
    val_cost, test_cost = cost.predict(val.input_tokens), cost.predict(test.input_tokens)
    predictions = dict(baselines or {})
    params = {}
    for kind in kinds:
        best, _ = search(kind, fit, val, n_trials, seed)
        router = make_router(kind, **best).fit(fit.X, fit.matrix.quality)
        predictions[kind] = (router.predict(val.X), router.predict(test.X))
        params[kind] = best
    results = {}
    for name, (val_q, test_q) in predictions.items():
        _, vc, vq = operating_curve(val_q, val_cost, val.matrix.quality, val.matrix.cost)
        validation = curve_summary(vc, vq, val.matrix.quality, val.matrix.cost)
        calibration = calibrate(val_q, val_cost, val.matrix.quality, val.matrix.cost, "quality_share", quality_share)
        _, tc, tq = operating_curve(test_q, test_cost, test.matrix.quality, test.matrix.cost)
        results[name] = {
            "params": params.get(name, {}),
            "validation_gap_closed": validation["gap_closed"],
            "test": {"brier": brier(test_q, test.matrix.quality),
                     **curve_summary(tc, tq, test.matrix.quality, test.matrix.cost, test.matrix.models)},
            "calibrated": target_report(calibration, test_q, test_cost, test.matrix.quality, test.matrix.cost),
            "curve": {"costs": tc.tolist(), "qualities": tq.tolist()},
        }
    headline = max(kinds, key=lambda k: results[k]["validation_gap_closed"])
    single_costs, single_qualities = single_model_points(test.matrix.quality, test.matrix.cost)
    return {"headline": headline, "routers": results,
            "targets": calibration_targets(*predictions[headline], val_cost, test_cost, val, test),
            "prompts": {"fit": len(fit), "validation": len(val), "test": len(test)},
            "singles": {m: (float(c), float(q)) for m, c, q in zip(test.matrix.models, single_costs, single_qualities)},
            "oracle": [h.tolist() for h in hull(*oracle_curve(test.matrix.quality, test.matrix.cost))]}


def calibration_targets(val_q, test_q, val_cost, test_cost, val: Dataset, test: Dataset) -> list[dict]:
    """Each kind of target calibrated on validation, then checked on test: keep 95% of the best
    model's quality; at most 30% of calls to the strongest model; at most a quarter of the best
    single model's bill (its validation cost per 1k calls / 4)."""
    best = best_single_model(val.matrix.quality, val.matrix.cost)
    budget = 1000 * float(val.matrix.cost[:, best].mean()) / 4
    reports = []
    for kind, target in (("quality_share", 0.95), ("strong_share", 0.30), ("cost_per_1k", budget)):
        calibration = calibrate(val_q, val_cost, val.matrix.quality, val.matrix.cost, kind, target)
        report = target_report(calibration, test_q, test_cost, test.matrix.quality, test.matrix.cost)
        reports.append({"kind": kind, "target": target, "validation": calibration.validation_value,
                        "validation_met": calibration.met, "test": report["achieved"], "test_met": report["met"],
                        "test_quality_share": report["quality_share"], "test_cost_per_1k": report["cost_per_1k"]})
    return reports


def task_only_predictions(fit: Dataset, *others: Dataset) -> list[np.ndarray]:
    """The task-name-only router: each model's mean training quality on the prompt's task."""
    tasks = fit.matrix.prompts["task"].to_numpy()
    means = {t: np.nanmean(fit.matrix.quality[tasks == t], axis=0) for t in set(tasks)}
    overall = np.nanmean(fit.matrix.quality, axis=0)
    return [np.array([means.get(t, overall) for t in d.matrix.prompts["task"].to_numpy()]) for d in others]


def routerbench(outcomes: pl.DataFrame, featurize, kinds=("linear", "lgbm", "mf"), n_trials: int = 6) -> dict:
    """RouterBench's 11 models: its train split (minus any duplicate of a test prompt) -> its test split."""
    rows = outcomes.filter((pl.col("source") == "routerbench") & pl.col("quality").is_not_null())
    data = complete_rows(build_dataset(rows, sorted(rows["model"].unique().to_list()), featurize))
    split_label = data.matrix.prompts["split"].to_numpy()
    test = data.take(np.nonzero(split_label == "test")[0])
    test_groups = set(test.groups)
    train = data.take(np.array([i for i, (s, g) in enumerate(zip(split_label, data.groups))
                                if s == "train" and g not in test_groups]))
    fit_idx, val_idx = group_holdout(train.groups, 0.2, seed=1)
    fit, val = train.take(fit_idx), train.take(val_idx)
    task_val, task_test = task_only_predictions(fit, val, test)
    result = pool_experiment(fit, val, test, kinds, n_trials, baselines={"task name only": (task_val, task_test)})
    gpt4 = test.matrix.models.index(STRONG)
    gpt4_quality = float(test.matrix.quality[:, gpt4].mean())
    result["gpt4"] = {"quality": gpt4_quality, "cost": float(test.matrix.cost[:, gpt4].mean())}
    for entry in result["routers"].values():
        entry["test"]["cost_at_gpt4_quality"] = cost_at_quality(entry["curve"]["costs"], entry["curve"]["qualities"],
                                                                gpt4_quality)
    return result


def modern_pool_data(outcomes: pl.DataFrame, featurize) -> tuple[list[str], Dataset]:
    """ZeroEval's models that answered every benchmark, and the prompts all of them answered."""
    rows = outcomes.filter((pl.col("source") == "zeroeval") & pl.col("quality").is_not_null())
    tasks = rows["task"].n_unique()
    coverage = rows.group_by("model").agg(pl.col("task").n_unique().alias("tasks"))
    models = sorted(coverage.filter(pl.col("tasks") == tasks)["model"].to_list())
    return models, complete_rows(build_dataset(rows, models, featurize))


def held_out_splits(data: Dataset):
    """Per benchmark held out in turn: (benchmark, fit, validation, test), trained on the others minus duplicates
    of the held-out prompts, validation a fifth of those by duplicate group."""
    task_of = data.matrix.prompts["task"].to_numpy()
    for task in sorted(set(task_of)):
        test = data.take(np.nonzero(task_of == task)[0])
        test_groups = set(test.groups)
        train = data.take(np.array([i for i, (t, g) in enumerate(zip(task_of, data.groups))
                                    if t != task and g not in test_groups]))
        fit_idx, val_idx = group_holdout(train.groups, 0.2, seed=1)
        yield task, train.take(fit_idx), train.take(val_idx), test


def modern_pool(outcomes: pl.DataFrame, featurize, kinds=("linear", "mf"), n_trials: int = 6) -> dict:
    """Each benchmark of the modern pool (:func:`modern_pool_data`) held out in turn (:func:`held_out_splits`);
    and ``within``: a quarter of the prompts of all three held out by duplicate group, as a customer training on
    its own traffic would."""
    models, data = modern_pool_data(outcomes, featurize)
    results = {"models": models, "held_out": {task: pool_experiment(fit, val, test, kinds, n_trials)
                                              for task, fit, val, test in held_out_splits(data)}}
    keep, held = group_holdout(data.groups, 0.25, seed=0)
    train = data.take(keep)
    fit_idx, val_idx = group_holdout(train.groups, 0.2, seed=1)
    results["within"] = pool_experiment(train.take(fit_idx), train.take(val_idx), data.take(held), kinds, n_trials)
    return results
