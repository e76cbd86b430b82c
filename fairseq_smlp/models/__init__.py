from . import gmlp_lm, smlp, transformer_moe  # noqa: F401  (register the models and archs)
