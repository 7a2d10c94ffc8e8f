"""Output-length prediction per model (router_ml.output_length) against real answer lengths.

Rows: outcomes with a recorded answer length (output_tokens, counted from the response texts), at most
--rows of them (sampled with a fixed seed). Split by duplicate group: 20% held out for the test, and of the
rest 20% for validation, where the ridge penalty is chosen and the upper bound calibrated, as `router-ml
train` does (router_ml.output_length.fit_on_validation). Features: the serving featurizer (static encoder,
head and tail views, surface statistics). Reported per source on the held-out rows, against the per-model
median length of the fit and validation rows:

- MAE and median absolute error in tokens;
- share of predictions within a factor of 2 of the real length (both +1, so 0 and 1 tokens compare);
- coverage of the upper bound (predict_upper, quantile 0.9): the share of real lengths at or below it,
  and its mean, which is what a budget reservation would hold.

Run: `.venv/bin/python benchmarks/output_length.py` (about two minutes on 2 cores). Writes
benchmarks/results/output_length.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import polars as pl

from router_ml.config import PROJECT_ROOT, get_settings
from router_ml.embed import StaticEncoder
from router_ml.features import PromptFeaturizer
from router_ml.output_length import fit_on_validation
from router_ml.split import group_holdout

RESULTS = PROJECT_ROOT / "benchmarks" / "results"


def metrics(real: np.ndarray, predicted: np.ndarray, upper: np.ndarray | None = None) -> dict:
    error = np.abs(predicted - real)
    ratio = (predicted + 1) / (real + 1)
    out = {"rows": int(len(real)), "mae_tokens": float(error.mean()), "median_abs_error_tokens": float(np.median(error)),
           "within_2x": float(np.mean((ratio <= 2) & (ratio >= 0.5)))}
    if upper is not None:
        out.update(upper_coverage=float(np.mean(real <= upper)), upper_mean_tokens=float(upper.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = get_settings()
    table = (pl.read_parquet(settings.outcomes_path, columns=["prompt", "model", "source", "group_id", "output_tokens"])
             .filter(pl.col("output_tokens").is_not_null()))
    if table.height > args.rows:
        table = table.sample(args.rows, seed=0)
    fit_idx, test_idx = group_holdout(table["group_id"].to_list(), 0.2, seed=0)
    featurize = PromptFeaturizer(StaticEncoder(settings.static_encoder).encode).transform
    prompts = table["prompt"].to_list()
    unique = list(dict.fromkeys(prompts))
    features = featurize(unique)
    X = features[[{p: i for i, p in enumerate(unique)}[p] for p in prompts]]
    models, tokens = np.array(table["model"].to_list()), table["output_tokens"].to_numpy().astype(float)
    groups = np.array(table["group_id"].to_list())
    train_idx, val_idx = (fit_idx[part] for part in group_holdout(groups[fit_idx].tolist(), 0.2, seed=1))
    predictor, choice = fit_on_validation(X[train_idx], models[train_idx], tokens[train_idx],
                                          X[val_idx], models[val_idx], tokens[val_idx])
    medians = {m: float(np.median(tokens[fit_idx][models[fit_idx] == m])) for m in np.unique(models[fit_idx])}
    overall = float(np.median(tokens[fit_idx]))
    predicted, upper, baseline = (np.empty(len(test_idx)) for _ in range(3))
    for model in np.unique(models[test_idx]):
        rows = np.where(models[test_idx] == model)[0]
        predicted[rows] = predictor.predict(X[test_idx][rows], model)
        upper[rows] = predictor.predict_upper(X[test_idx][rows], model)
        baseline[rows] = medians.get(model, overall)
    sources = np.array(table["source"].to_list())[test_idx]
    real = tokens[test_idx]
    report = {"rows": {"fit": int(len(train_idx)), "validation": int(len(val_idx)), "held_out": int(len(test_idx))},
              "choice": choice, "by_source": {}}
    for source in ["all", *sorted(set(sources))]:
        rows = np.ones(len(real), bool) if source == "all" else sources == source
        report["by_source"][source] = {"predictor": metrics(real[rows], predicted[rows], upper[rows]),
                                       "per_model_median": metrics(real[rows], baseline[rows])}
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "output_length.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'source':<12} {'rows':>7} {'MAE':>8} {'median AE':>10} {'within 2x':>10} {'upper cover':>12}  "
          f"| median baseline: MAE, within 2x")
    for source, r in report["by_source"].items():
        p, b = r["predictor"], r["per_model_median"]
        print(f"{source:<12} {p['rows']:>7} {p['mae_tokens']:>8.1f} {p['median_abs_error_tokens']:>10.1f} "
              f"{p['within_2x']:>10.3f} {p['upper_coverage']:>12.3f}  | {b['mae_tokens']:.1f}, {b['within_2x']:.3f}")
    print(f"wrote {RESULTS / 'output_length.json'} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
