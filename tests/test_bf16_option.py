"""fairseq's --bf16 without its implied TPU mode, in every section of the config that carries
one: a section left on TPU would skip fairseq's distributed launch or pick a TPU wrapper."""

from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import DictConfig

from fairseq_smlp.comparison.flops import parse_training_args
from fairseq_smlp.trainer.bf16 import untie_bf16_from_tpu


def tpu_flags(data_dir, *flags):
    args = parse_training_args([str(data_dir), "--arch", "transformer_lm", "--task",
                                "language_modeling", "--optimizer", "adam", "--cpu", *flags])
    cfg = convert_namespace_to_omegaconf(args)
    return cfg, {name: section.tpu for name, section in cfg.items()
                 if isinstance(section, DictConfig) and "tpu" in section}


def test_bf16_alone_leaves_no_section_on_tpu(data_dir):
    cfg, before = tpu_flags(data_dir, "--bf16")
    assert set(before) >= {"common", "distributed_training", "optimizer"}
    assert all(before.values())  # fairseq's own parse: bf16 implies tpu everywhere
    assert untie_bf16_from_tpu(cfg, ["--bf16"])
    assert not any(section.tpu for section in cfg.values()
                   if isinstance(section, DictConfig) and "tpu" in section)
    assert cfg.common.bf16


def test_an_explicit_tpu_and_fp32_are_left_as_fairseq_has_them(data_dir):
    cfg, _ = tpu_flags(data_dir, "--bf16", "--tpu")
    assert not untie_bf16_from_tpu(cfg, ["--bf16", "--tpu"]) and cfg.distributed_training.tpu
    cfg, flags = tpu_flags(data_dir)
    assert not untie_bf16_from_tpu(cfg, []) and not any(flags.values())
