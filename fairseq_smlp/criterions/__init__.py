from . import moe_cross_entropy, partial_prediction_cross_entropy  # noqa: F401  (registers them)
