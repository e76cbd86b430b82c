"""Under --fp16 --fp16-no-flatten-grads fairseq's Trainer steps an fp32 copy of the parameters
and measures the gradient norm on it. With experts replicated (4 ranks, 2 experts) the norm must
count every expert once: it is checked against the norm computed by hand from every rank's fp32
gradients. The flattened copy (--fp16 alone), which cannot keep experts apart, is refused with
the flags that avoid it.
"""

import pytest
import torch
import torch.distributed as dist
from fairseq import metrics, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim.fp16_optimizer import FP16Optimizer
from fairseq.trainer import Trainer
from helpers import make_dictionary, run_on_ranks

import fairseq_smlp

USER_DIR = fairseq_smlp.__path__[0]
WORLD_SIZE, NUM_EXPERTS, GROUP_SIZE = 4, 2, 2  # ranks r and r + 2 hold the same experts
BATCH, TOKENS_PER_SAMPLE, VOCAB = 3, 16, 40


def build_trainer(data_dir, rank, precision):
    argv = [
        str(data_dir), "--user-dir", USER_DIR, "--arch", "transformer_lm_switch_tiny",
        "--task", "language_modeling", "--criterion", "moe_cross_entropy",
        "--decoder-layers", "2",
        "--moe-expert-count", str(NUM_EXPERTS), "--tokens-per-sample", str(TOKENS_PER_SAMPLE),
        "--optimizer", "sgd", "--lr", "0.1", "--cpu", "--seed", "1",
        "--ddp-backend", "legacy_ddp", "--distributed-world-size", str(WORLD_SIZE),
        "--distributed-rank", str(rank), "--distributed-backend", "gloo", *precision,
    ]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def batch(dictionary, rank):
    generator = torch.Generator().manual_seed(rank)
    tokens = torch.randint(dictionary.nspecial, len(dictionary),
                           (BATCH, TOKENS_PER_SAMPLE + 1), generator=generator)
    return {
        "id": torch.arange(BATCH), "nsentences": BATCH, "ntokens": BATCH * TOKENS_PER_SAMPLE,
        "net_input": {"src_tokens": tokens[:, :-1],
                      "src_lengths": torch.full((BATCH,), TOKENS_PER_SAMPLE)},
        "target": tokens[:, 1:],
    }


def square_sums(parameters):
    """(shared, expert) sums of squared gradient entries, in float64."""
    sums = [0.0, 0.0]
    for parameter in parameters:
        sums[hasattr(parameter, "expert")] += parameter.grad.double().square().sum().item()
    return sums


def check_norm_counts_each_expert_once(data_dir, rank):
    trainer = build_trainer(data_dir, rank, ["--fp16", "--fp16-no-flatten-grads"])
    assert isinstance(trainer.optimizer, FP16Optimizer)
    with metrics.aggregate() as aggregator:
        trainer.train_step([batch(trainer.task.source_dictionary, rank)])
    # --clip-norm 0: after the step the fp32 gradients are the true gradients whose norm was
    # logged (fairseq unscales them in place before stepping SGD).
    copies = trainer.optimizer.fp32_params
    assert sum(hasattr(copy, "expert") for copy in copies) > 0
    everyone = [None] * WORLD_SIZE
    dist.all_gather_object(everyone, square_sums(copies))
    shared = {round(sums[0], 6) for sums in everyone}
    assert len(shared) == 1, "shared gradients differ between ranks"
    experts = [sums[1] for sums in everyone]
    assert experts[:GROUP_SIZE] == pytest.approx(experts[GROUP_SIZE:], rel=1e-6)  # replicas
    want = (everyone[0][0] + sum(experts[:GROUP_SIZE])) ** 0.5
    counted_twice = (everyone[0][0] + sum(experts)) ** 0.5
    assert counted_twice > want * 1.01  # the check below can tell the two apart
    assert aggregator["gnorm"].avg == pytest.approx(want, rel=1e-5)


def check_flat_fp16_refused(data_dir, rank):
    trainer = build_trainer(data_dir, rank, ["--fp16"])
    with pytest.raises(ValueError, match=r"add --fp16-no-flatten-grads \(for --bf16 too\), or use "
                                         "--memory-efficient-fp16"):
        trainer.optimizer


def on_rank(rank, world_size, data_dir):
    check_norm_counts_each_expert_once(data_dir, rank)
    check_flat_fp16_refused(data_dir, rank)


def test_mixed_precision_norm_with_replicated_experts(tmp_path):
    make_dictionary(VOCAB).save(str(tmp_path / "dict.txt"))
    run_on_ranks(on_rank, WORLD_SIZE, tmp_path)
