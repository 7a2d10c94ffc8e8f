"""Routers predict each model's quality for a prompt; a policy turns predictions into a choice."""

from router_ml.routers.estimators import KNNQualityRouter, LinearQualityRouter, MeanQualityRouter
from router_ml.routers.policy import calibrate_lambda, choose, operating_curve

__all__ = ["KNNQualityRouter", "LinearQualityRouter", "MeanQualityRouter", "calibrate_lambda", "choose", "operating_curve"]
