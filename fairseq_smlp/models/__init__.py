from . import gmlp_lm  # noqa: F401  (registers the gmlp_lm model and its architectures)
