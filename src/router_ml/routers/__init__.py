"""Routers predict each model's quality for a prompt; a policy turns predictions into a choice."""

from router_ml.routers.estimators import KNNQualityRouter, LinearQualityRouter, MeanQualityRouter
from router_ml.routers.gbm import LightGBMQualityRouter
from router_ml.routers.mf import MatrixFactorizationRouter
from router_ml.routers.policy import calibrate_lambda, choose, operating_curve
from router_ml.routers.stacking import StackedQualityRouter

__all__ = [
    "KNNQualityRouter", "LightGBMQualityRouter", "LinearQualityRouter", "MatrixFactorizationRouter",
    "MeanQualityRouter", "StackedQualityRouter", "calibrate_lambda", "choose", "operating_curve",
]
