"""The training pipeline, as functions a notebook can call one by one.

outcomes -> pool of models -> (prompts x models) matrices -> features -> group-aware
train / validation / test split -> optuna search on validation -> fit -> calibrate
the policy on validation -> evaluate on test -> bundle.

Every setting (hyper-parameters, the policy's cost weight) is chosen on validation
data split from the training data; the test split is only ever scored.

The outcomes come from the public table or from the gateway's call log (:func:`outcomes_from_store`,
sparse: usually one model per prompt). Routers learn from the known cells; calibrating the policy
needs validation prompts with an outcome for every pool model, and scoring needs such test prompts:
what could not be scored is said in the bundle's ``notes``, and what the selection left out is
counted in ``data.selection``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from router_ml.label import OutcomeMatrix, outcome_matrix
from router_ml.output_length import OutputLengthPredictor, fit_on_validation
from router_ml.progress import Progress
from router_ml.routers.cost import CostPredictor
from router_ml.split import group_holdout

ROUTER_KINDS = ("mean", "knn", "linear", "lgbm", "mf", "stack")
AUTO_KINDS = ("linear", "mf", "knn")
"""What ``router="auto"`` tries: the kinds that fit in seconds to a minute on the public data."""
SEARCHABLE = ("knn", "linear", "lgbm", "mf")


@dataclass
class Dataset:
    """An outcome matrix with the features and input-token count of each of its prompts."""

    matrix: OutcomeMatrix
    X: np.ndarray
    input_tokens: np.ndarray

    def take(self, rows: np.ndarray) -> Dataset:
        return Dataset(self.matrix.take(rows), self.X[rows], self.input_tokens[rows])

    @property
    def groups(self) -> list[str]:
        return self.matrix.prompts["group_id"].to_list()

    def __len__(self) -> int:
        return len(self.X)


@dataclass
class TrainConfig:
    """What to train. ``models`` empty means every model with at least ``min_prompts`` outcomes."""

    name: str = "router"
    router: str = "auto"
    sources: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    min_prompts: int = 200
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    n_trials: int = 10
    quality_share: float = 0.95
    seed: int = 0


def _in_scope(outcomes: pl.DataFrame, config: TrainConfig) -> pl.DataFrame:
    """The rows with a known quality, of the configured sources and tasks."""
    rows = outcomes.filter(pl.col("quality").is_not_null())
    if config.sources:
        rows = rows.filter(pl.col("source").is_in(config.sources))
    if config.tasks:
        rows = rows.filter(pl.col("task").is_in(config.tasks))
    return rows


def _model_counts(rows: pl.DataFrame) -> dict[str, int]:
    counts = rows.group_by("model").len().sort("len", "model", descending=[True, False])
    return dict(zip(counts["model"].to_list(), counts["len"].to_list()))


def _listed(counts: dict[str, int], limit: int = 8) -> str:
    shown = [f"{model} ({n})" for model, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def select_outcomes(outcomes: pl.DataFrame, config: TrainConfig) -> tuple[pl.DataFrame, list[str]]:
    """The rows of the configured sources, tasks and models, and the model pool (sorted)."""
    rows = _in_scope(outcomes, config)
    if config.models:
        missing = sorted(set(config.models) - set(rows["model"].unique().to_list()))
        if missing:
            raise ValueError(f"models without outcomes in the selected data: {', '.join(missing)}")
        models = sorted(config.models)
    else:
        counts = rows.group_by("model").len().filter(pl.col("len") >= config.min_prompts)
        models = sorted(counts["model"].to_list())
    if len(models) < 2:
        counts = _model_counts(rows)
        held = (f"{rows.height} outcomes with a known quality on {len(counts)} model(s)"
                + (f": {_listed(counts)}" if counts else ""))
        need = ("two models" if config.models else
                f"two models with at least {config.min_prompts} outcomes each (--min-prompts)")
        raise ValueError(f"a router needs at least {need}; the selection holds {held}")
    return rows.filter(pl.col("model").is_in(models)), models


def selection_report(outcomes: pl.DataFrame, config: TrainConfig, models: list[str]) -> dict:
    """What :func:`select_outcomes` left out of ``outcomes``, counted: rows without a quality, rows of
    other sources or tasks, and the models kept out of the pool (with their outcome counts)."""
    known = outcomes.filter(pl.col("quality").is_not_null()).height
    rows = _in_scope(outcomes, config)
    left_out = {m: n for m, n in _model_counts(rows).items() if m not in models}
    return {"outcomes": outcomes.height, "without_quality": outcomes.height - known,
            "other_sources_or_tasks": known - rows.height, "in_pool": rows.height - sum(left_out.values()),
            "models_left_out": left_out,
            "left_out_because": ("not in the pool named by --model" if config.models else
                                 f"with fewer than {config.min_prompts} outcomes (--min-prompts)")}


def outcomes_from_store(url: str, judged: bool = True) -> tuple[pl.DataFrame, dict]:
    """The gateway's call log at ``url`` as an outcomes table, and what was read, counted.

    Its labelled answers (:meth:`router_ml.calllog.store.CallStore.outcomes`): the 'ok' calls that got feedback
    and, with ``judged``, the answers a shadow judge graded, the routed answer and the reference's (and a probe's)
    on the same prompt: a prompt answered by two models with a label each, what a router learns from. The
    store is opened without a journal (nothing is replayed or written; a gateway that died replays its journal
    when it next starts) and closed before returning, writer thread included. A SQLite URL whose file does not
    exist is an error, not a new empty log. The counts: answers with feedback, judged answers without feedback,
    the verdicts behind them, 'ok' answers with neither label, failed calls (never outcomes), and labelled
    answers of one (prompt, model) that a later one superseded (the outcomes schema keeps one per pair).
    """
    import hashlib

    import sqlalchemy as sa

    from router_ml.calllog.store import CallStore

    parsed = sa.engine.make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        raise ValueError(f"no call log at {parsed.database}: the gateway writes it (`router-ml serve`); "
                         "point --store-url or $ROUTER_ML_STORE_URL at it")
    store = CallStore(url)
    try:
        counts = store.label_counts()
        table = store.outcomes(with_feedback_only=True, judged=judged)
    finally:
        store.close()
    info = {"url": shown, "calls_with_feedback": counts.get("with_feedback", 0),
            "calls_judged": counts.get("judged", 0), "verdicts": counts.get("verdicts", 0),
            "judged_used": judged, "calls_unlabelled": counts.get("unlabelled", 0),
            "failed_calls": counts.get("failed", 0), "outcomes": table.height}
    info["superseded_calls"] = info["calls_with_feedback"] + judged * info["calls_judged"] - table.height
    if table.height == 0:
        judged_note = (f"{info['calls_judged']} judged, not used with --no-judged" if not judged else
                       "none judged: a shadow judge grades a share of routed calls when ROUTER_ML_JUDGE_MODEL names "
                       "a served model")
        raise ValueError(f"the call log {shown} holds no labelled answer ({info['calls_unlabelled']} answered "
                         f"call(s) without feedback, {judged_note}, {info['failed_calls']} failed): give feedback "
                         "with POST /v1/feedback (call_id and quality) before training on it")
    key = table.sort("prompt_id", "model").select("prompt_id", "model", "quality", "cost_usd", "input_tokens", "ts")
    info["outcomes_sha256"] = hashlib.sha256(key.write_csv().encode()).hexdigest()
    return table, info


def combine_outcomes(logged: pl.DataFrame, table: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The logged outcomes beside an outcomes table, and how many rows of ``table`` a logged row of the
    same (prompt_id, model) replaced (the log is the more recent word)."""
    kept = table.join(logged.select("prompt_id", "model"), on=["prompt_id", "model"], how="anti")
    return pl.concat([kept, logged.select(kept.columns)], how="vertical"), table.height - kept.height


def build_dataset(rows: pl.DataFrame, models: list[str], featurize, progress: Progress | None = None) -> Dataset:
    """Pivot ``rows`` into a matrix over ``models`` and compute each prompt's features with ``featurize``."""
    progress = progress or Progress()
    matrix = outcome_matrix(rows, models)
    tokens = rows.group_by("prompt_id").agg(pl.col("input_tokens").median())
    tokens = matrix.prompts.select("prompt_id").join(tokens, on="prompt_id", how="left")["input_tokens"].to_numpy()
    progress.stage("features", len(matrix.prompts))
    X = featurize(matrix.prompts["prompt"].to_list())
    progress.advance(len(matrix.prompts))
    return Dataset(matrix, X, np.asarray(tokens, dtype=float))


def split(data: Dataset, config: TrainConfig) -> tuple[Dataset, Dataset, Dataset | None]:
    """(train, validation, test) by duplicate group; test is None when ``test_fraction`` is 0."""
    test = None
    if config.test_fraction:
        keep, held = group_holdout(data.groups, config.test_fraction, seed=config.seed)
        data, test = data.take(keep), data.take(held)
    fit_rows, val_rows = group_holdout(data.groups, config.validation_fraction, seed=config.seed + 1)
    return data.take(fit_rows), data.take(val_rows), test


def make_router(kind: str, **params):
    """A fresh (unfitted) quality router of the given kind."""
    from router_ml import routers

    if kind not in ROUTER_KINDS:
        raise ValueError(f"unknown router kind {kind!r}; choose one of {', '.join(ROUTER_KINDS)} (or auto)")
    if kind == "stack":
        bases = [("mf", routers.MatrixFactorizationRouter()), ("linear", routers.LinearQualityRouter(alpha=100.0)),
                 ("knn", routers.KNNQualityRouter(n_neighbors=40))]
        return routers.StackedQualityRouter(bases, **params)
    classes = {"mean": "MeanQualityRouter", "knn": "KNNQualityRouter", "linear": "LinearQualityRouter",
               "lgbm": "LightGBMQualityRouter", "mf": "MatrixFactorizationRouter"}
    return getattr(routers, classes[kind])(**params)


def search_space(kind: str, trial) -> dict:
    """Hyper-parameters optuna may try for each router kind."""
    if kind == "knn":
        return {"n_neighbors": trial.suggest_int("n_neighbors", 5, 200, log=True),
                "prior_weight": trial.suggest_float("prior_weight", 0.5, 20, log=True)}
    if kind == "linear":
        return {"alpha": trial.suggest_float("alpha", 0.1, 1000, log=True)}
    if kind == "lgbm":
        return {"n_estimators": trial.suggest_int("n_estimators", 50, 400, log=True),
                "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
                "num_leaves": trial.suggest_int("num_leaves", 4, 31, log=True),
                "min_child_samples": trial.suggest_int("min_child_samples", 10, 100, log=True)}
    if kind == "mf":
        return {"n_factors": trial.suggest_int("n_factors", 4, 64, log=True),
                "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
                "epochs": trial.suggest_int("epochs", 5, 40, log=True)}
    return {}


def brier(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error over the known cells."""
    known = ~np.isnan(truth)
    return float(np.mean((predicted[known] - truth[known]) ** 2))


def search(kind: str, fit: Dataset, val: Dataset, n_trials: int, seed: int = 0, progress: Progress | None = None):
    """Optuna search of ``kind``'s hyper-parameters, minimizing validation Brier score.

    Returns (best params, study). Kinds without a search space return ({}, None).
    """
    progress = progress or Progress()
    if n_trials <= 0 or kind not in SEARCHABLE:
        return {}, None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    progress.stage(f"optuna search ({kind})", n_trials)

    def objective(trial) -> float:
        router = make_router(kind, **search_space(kind, trial)).fit(fit.X, fit.matrix.quality)
        return brier(router.predict(val.X), val.matrix.quality)

    study.optimize(objective, n_trials=n_trials, callbacks=[lambda study, trial: progress.advance(1)])
    return study.best_params, study


def fit_cost(data: Dataset) -> CostPredictor:
    return CostPredictor().fit(data.input_tokens, data.matrix.cost)


def _length_rows(rows: pl.DataFrame, data: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, model, output tokens) of each outcome of ``data``'s prompts with a recorded answer length."""
    index = data.matrix.prompts.select("prompt_id").with_row_index("row")
    known = (rows.filter(pl.col("output_tokens").is_not_null()).select("prompt_id", "model", "output_tokens")
             .join(index, on="prompt_id", how="inner"))
    return (data.X[known["row"].to_numpy()], np.asarray(known["model"].to_list()),
            known["output_tokens"].to_numpy().astype(float))


def fit_lengths(rows: pl.DataFrame, fit: Dataset, val: Dataset) -> tuple[OutputLengthPredictor | None, dict]:
    """Each model's answer length from the prompt (for the gateway's pre-call cost estimate and budget
    reservation), tuned and calibrated on validation; None when the data records no answer lengths."""
    X_fit, m_fit, y_fit = _length_rows(rows, fit)
    X_val, m_val, y_val = _length_rows(rows, val)
    if len(y_fit) == 0 or len(y_val) == 0:
        return None, {"note": "no answer lengths in the fit or validation outcomes"}
    return fit_on_validation(X_fit, m_fit, y_fit, X_val, m_val, y_val)


def catalog(models: list[str]) -> list[dict]:
    """Each model with its list prices (USD per million tokens), as priced for the outcomes table."""
    from router_ml.pricing import UnknownModelError, price_of

    entries = []
    for model in models:
        try:
            price = price_of(model)
            entries.append({"model": model, "input_usd_per_mtok": float(price.input_usd_per_mtok),
                            "output_usd_per_mtok": float(price.output_usd_per_mtok), "price_origin": price.origin})
        except UnknownModelError:
            entries.append({"model": model, "input_usd_per_mtok": None, "output_usd_per_mtok": None})
    return entries


def default_output_dir(name: str) -> Path:
    from router_ml.config import PROJECT_ROOT

    return PROJECT_ROOT / "models" / name


def complete_rows(data: Dataset) -> Dataset:
    """The prompts with a known quality and cost for every model (where curves can be scored)."""
    keep = ~(np.isnan(data.matrix.quality).any(axis=1) | np.isnan(data.matrix.cost).any(axis=1))
    return data.take(np.nonzero(keep)[0])


def score(router, cost: CostPredictor, data: Dataset, calibration=None) -> dict:
    """Test metrics of a fitted router on ``data``'s complete rows: the curve summary beside the
    baselines and, given a calibration, how well its target held."""
    from router_ml.evaluate import curve_summary
    from router_ml.routers.policy import operating_curve, target_report

    data = complete_rows(data)
    if len(data) == 0:
        raise ValueError("no prompt has outcomes for every model of the pool: cannot score a curve")
    pred_q, pred_c = router.predict(data.X), cost.predict(data.input_tokens)
    _, costs, qualities = operating_curve(pred_q, pred_c, data.matrix.quality, data.matrix.cost)
    summary = curve_summary(costs, qualities, data.matrix.quality, data.matrix.cost, data.matrix.models)
    metrics = {"prompts": len(data), "brier": brier(pred_q, data.matrix.quality), **summary}
    if calibration is not None:
        metrics["target"] = target_report(calibration, pred_q, pred_c, data.matrix.quality, data.matrix.cost)
    return {"metrics": metrics, "curve": {"costs": costs.tolist(), "qualities": qualities.tolist()}}


@dataclass
class TrainResult:
    bundle_dir: Path
    meta: dict
    router: object
    cost: CostPredictor
    test: dict | None
    notes: list[str] = field(default_factory=list)
    """What could not be done as usual (a test split without complete prompts, a thin calibration), in words."""


def coverage(data: Dataset) -> dict:
    """Prompts, known (prompt, model) outcomes, and complete prompts (a known outcome for every model)."""
    known = ~np.isnan(data.matrix.quality)
    return {"prompts": len(data), "outcomes": int(known.sum()), "complete": len(complete_rows(data))}


def _models_per_prompt(data: Dataset) -> str:
    """'14 with 1 model, 2 with 2 models': how many pool models each prompt has an outcome for."""
    counts = np.bincount((~np.isnan(data.matrix.quality)).sum(axis=1), minlength=1)
    return ", ".join(f"{n} with {k} model{'s' if k != 1 else ''}" for k, n in enumerate(counts) if n)


def check_fit_coverage(fit: Dataset, data: Dataset) -> None:
    """Every pool model needs a known quality among the fit prompts; name those that lack one."""
    fit_known = (~np.isnan(fit.matrix.quality)).sum(axis=0)
    all_known = (~np.isnan(data.matrix.quality)).sum(axis=0)
    absent = [j for j, n in enumerate(fit_known) if n == 0]
    if absent:
        named = ", ".join(f"{fit.matrix.models[j]} ({all_known[j]} outcome(s), all on validation or test prompts)"
                          for j in absent)
        raise ValueError(f"no outcome among the {len(fit)} fit prompts for {named}: a router cannot learn "
                         "a model it never saw; add outcomes for it or leave it out of the pool (--model)")


def validation_gap_closed(router, cost: CostPredictor, val: Dataset) -> float:
    """Share of the zero-router-to-oracle AIQ gap the router closes on (complete) validation rows."""
    from router_ml.evaluate import curve_summary
    from router_ml.routers.policy import operating_curve

    pred_q, pred_c = router.predict(val.X), cost.predict(val.input_tokens)
    _, costs, qualities = operating_curve(pred_q, pred_c, val.matrix.quality, val.matrix.cost)
    return curve_summary(costs, qualities, val.matrix.quality, val.matrix.cost)["gap_closed"]


def fit_router(config: TrainConfig, fit: Dataset, val: Dataset, cost: CostPredictor, progress: Progress):
    """(kind, params, fitted router, validation gap closed per kind tried) for ``config.router``;
    ``"auto"`` tries :data:`AUTO_KINDS` and keeps the one closing most of the gap on validation."""
    kinds = AUTO_KINDS if config.router == "auto" else (config.router,)
    tried = {}
    for kind in kinds:
        params, _ = search(kind, fit, val, config.n_trials, config.seed, progress)
        progress.stage(f"fit {kind}", 1)
        router = make_router(kind, **params).fit(fit.X, fit.matrix.quality)
        progress.advance(1)
        tried[kind] = (params, router, validation_gap_closed(router, cost, val))
    best = max(tried, key=lambda k: np.nan_to_num(tried[k][2], nan=-np.inf))
    params, router, _ = tried[best]
    return best, params, router, {k: v[2] for k, v in tried.items()}


def bundle_meta(config: TrainConfig, encoder, models: list[str], kind: str, router, params: dict, tried: dict,
                calibration, splits: tuple[Dataset, Dataset, Dataset | None], outcomes_used: int, selection: dict,
                data_checksums: dict, metrics: dict, notes: list[str]) -> dict:
    """The bundle metadata every trainer writes (``run`` and the notebook alike), before versioning."""
    from dataclasses import asdict

    from router_ml.bundle import fingerprint

    fit, val, test = splits
    return {
        "name": config.name,
        "config": asdict(config),
        "encoder": {"id": encoder.encoder_id, "fingerprint": fingerprint(encoder)},
        "models": models,
        "catalog": catalog(models),
        "router": {"kind": kind, "class": type(router).__name__, "params": params, "selection": tried},
        "calibration": asdict(calibration),
        "data": {"prompts": {"fit": len(fit), "validation": len(val), "test": len(test) if test else 0},
                 "outcomes": outcomes_used, "selection": selection,
                 "coverage": {"fit": coverage(fit), "validation": coverage(val),
                              **({"test": coverage(test)} if test is not None else {})},
                 **data_checksums},
        "metrics": metrics,
        "notes": notes,
    }


def run(config: TrainConfig, outcomes: pl.DataFrame, encoder, out_dir: Path, progress: Progress | None = None,
        data_checksums: dict | None = None) -> TrainResult:
    """The whole pipeline: select, featurize, split, search, fit, calibrate, score, bundle."""
    from router_ml.bundle import save_bundle
    from router_ml.features import PromptFeaturizer
    from router_ml.routers.policy import calibrate

    progress = progress or Progress()
    rows, models = select_outcomes(outcomes, config)
    selection = selection_report(outcomes, config, models)
    data = build_dataset(rows, models, PromptFeaturizer(encoder.encode).transform, progress)
    fit, val, test = split(data, config)
    check_fit_coverage(fit, data)
    val_complete = complete_rows(val)
    if len(val_complete) == 0:
        raise ValueError(f"none of the {len(val)} validation prompts has outcomes for every model of the pool "
                         f"({', '.join(models)}; per prompt: {_models_per_prompt(val) or 'none'}): cannot "
                         "calibrate the policy; choose models that answered the same prompts (--source, --model)")
    notes = []
    if len(val_complete) < 20:
        notes.append(f"the policy is calibrated on only {len(val_complete)} validation prompt(s) with outcomes for "
                     f"every model (of {len(val)}: {_models_per_prompt(val)}); its quality target is a rough guess")
    cost = fit_cost(fit)
    kind, params, router, tried = fit_router(config, fit, val_complete, cost, progress)
    calibration = calibrate(router.predict(val_complete.X), cost.predict(val_complete.input_tokens),
                            val_complete.matrix.quality, val_complete.matrix.cost, "quality_share",
                            config.quality_share)
    scored = None
    if test is not None:
        test_complete = len(complete_rows(test))
        if test_complete:
            scored = score(router, cost, test, calibration)
        if not len(test):
            notes.append("not scored: the test split is empty (too few duplicate groups for --test-fraction)")
        elif test_complete < len(test):
            notes.append(f"{'not scored' if not test_complete else f'scored on {test_complete} prompt(s) only'}: "
                         f"{len(test) - test_complete} of the {len(test)} test prompts lack an outcome for some "
                         f"model of the pool (per prompt: {_models_per_prompt(test)}); a curve needs every "
                         "model's outcome")
    lengths, length_report = fit_lengths(rows, fit, val)
    meta = bundle_meta(config, encoder, models, kind, router, params, tried, calibration, (fit, val, test),
                       rows.height, selection, data_checksums or {}, scored["metrics"] if scored else {}, notes)
    meta["output_lengths"] = length_report
    meta = save_bundle(out_dir, meta, router, cost, lengths)
    return TrainResult(Path(out_dir), meta, router, cost, scored, notes)
