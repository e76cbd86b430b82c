from . import gmlp_lm, smlp  # noqa: F401  (register the models and their architectures)
