from . import partial_prediction_lm  # noqa: F401  (registers the task)
