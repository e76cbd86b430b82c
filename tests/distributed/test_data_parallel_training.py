"""fairseq's own Trainer on 2 gloo ranks takes the same steps as on one process over the same
global batch: same losses, same gradients of shared and expert parameters, same weights after.

The single process sees the two ranks' batches as two micro-batches of one update (what
--update-freq 2 does); routing decisions are per micro-batch there and per rank here, so they
agree. SGD with an active --clip-norm makes any error in gradient scale or norm visible in the
weights (Adam would hide a scale error).
"""

import pytest
import torch
import torch.distributed as dist
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer
from helpers import make_dictionary, run_on_ranks
from torch.nn.parallel import DistributedDataParallel

import fairseq_smlp
from fairseq_smlp.checkpoint.expert_state import parallel_experts, rank_share

USER_DIR = fairseq_smlp.__path__[0]
WORLD, STEPS, BATCH, TOKENS_PER_SAMPLE, VOCAB = 2, 2, 3, 20, 40

# name -> (arch, task, criterion). fairseq's pytorch_ddp passes CUDA device ids to DDP, so on
# CPU ranks its legacy_ddp backend runs; pytorch_ddp's handling of experts is checked below.
CASES = {
    "smlp_deterministic": ("smlp_deterministic_tiny", "language_modeling", "moe_cross_entropy"),
    "smlp_partial": ("smlp_partial_tiny", "partial_prediction_lm",
                     "partial_prediction_cross_entropy"),
    "switch": ("transformer_lm_switch_tiny", "language_modeling", "moe_cross_entropy"),
    "base": ("transformer_lm_base_tiny", "language_modeling", "moe_cross_entropy"),
}


def build_trainer(data_dir, case, world_size=1, rank=0):
    """fairseq-train's set-up; with several ranks, inside the caller's gloo process group."""
    arch, task_name, criterion = CASES[case]
    argv = [
        str(data_dir), "--user-dir", USER_DIR, "--arch", arch, "--task", task_name,
        "--criterion", criterion, "--decoder-layers", "2", "--dropout", "0",
        "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--optimizer", "sgd", "--lr", "0.5",
        "--clip-norm", "0.5", "--cpu", "--seed", "1", "--ddp-backend", "legacy_ddp",
        "--distributed-world-size", str(world_size),
    ]
    if world_size > 1:
        argv += ["--distributed-rank", str(rank), "--distributed-backend", "gloo"]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv)
    )
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def batches(dictionary):
    """STEPS global batches, each WORLD rank batches of BATCH random sequences."""
    generator = torch.Generator().manual_seed(7)
    first = dictionary.nspecial
    for _ in range(STEPS):
        shards = []
        for _ in range(WORLD):
            tokens = torch.randint(first, len(dictionary), (BATCH, TOKENS_PER_SAMPLE + 1),
                                   generator=generator)
            shards.append({
                "id": torch.arange(BATCH), "nsentences": BATCH,
                "ntokens": BATCH * TOKENS_PER_SAMPLE,
                "net_input": {"src_tokens": tokens[:, :-1],
                              "src_lengths": torch.full((BATCH,), TOKENS_PER_SAMPLE)},
                "target": tokens[:, 1:],
            })
        yield shards


def train(trainer, samples_per_step):
    """Per step: the reported loss and every gradient; then the weights."""
    record = {"loss": [], "grads": []}
    model = trainer.get_model()
    for samples in samples_per_step:
        logging_output = trainer.train_step(samples)
        record["loss"].append(logging_output["loss"])
        record["grads"].append({name: p.grad.clone() for name, p in model.named_parameters()})
    record["weights"] = {name: p.detach().clone() for name, p in model.named_parameters()}
    return record


def expert_rows(full, local, rank):
    rows = local.size(0)
    return full[rank * rows:(rank + 1) * rows]


def compare(rank, name, parameter, got, want):
    if hasattr(parameter, "expert"):
        want = expert_rows(want, got, rank)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def check_a_rank_refuses_another_ranks_file(trainer, rank):
    """What rank 0 saves holds the shared weights and rank 0's experts; rank 1 must not load
    it as its own (it raises before any exchange, so rank 0 only sends)."""
    model = trainer.get_model()
    share = [rank_share(model.state_dict(), parallel_experts(model), "a run") if rank == 0 else None]
    dist.broadcast_object_list(share, src=0)
    if rank == 1:
        with pytest.raises(ValueError, match="holds the experts of rank 0, not those of rank 1"):
            model.load_state_dict(share[0])


def check_pytorch_ddp_leaves_experts_alone(model, rank):
    """DDP neither overwrites this rank's experts with rank 0's at start nor averages them."""
    experts = {name for name, p in model.named_parameters() if hasattr(p, "expert")}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in experts:
                parameter.fill_(rank)
    ddp = DistributedDataParallel(model)
    assert ddp.parameters_to_ignore == experts
    assert all(bool((p == rank).all()) for name, p in model.named_parameters() if name in experts)


def on_rank(rank, world_size, data_dir, references):
    for case, reference in references["cases"].items():
        trainer = build_trainer(data_dir, case, world_size, rank)
        model = trainer.get_model()
        assert any(hasattr(p, "expert") for p in model.parameters()), case
        record = train(trainer, [[shards[rank]] for shards in references["batches"]])
        parameters = dict(model.named_parameters())
        assert record["loss"] == pytest.approx(reference["loss"], rel=1e-5), case
        for got_step, want_step in zip(record["grads"], reference["grads"]):
            for name, grad in got_step.items():
                compare(rank, f"{case} grad {name}", parameters[name], grad, want_step[name])
        for name, weight in record["weights"].items():
            compare(rank, f"{case} weight {name}", parameters[name], weight,
                    reference["weights"][name])
    check_a_rank_refuses_another_ranks_file(trainer, rank)
    check_pytorch_ddp_leaves_experts_alone(trainer.get_model(), rank)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dictionary")
    make_dictionary(VOCAB).save(str(directory / "dict.txt"))
    return directory


def test_two_ranks_take_the_steps_of_one_process(data_dir):
    references = {"cases": {}}
    for case in CASES:
        trainer = build_trainer(data_dir, case)
        references["batches"] = list(batches(trainer.task.source_dictionary))
        references["cases"][case] = train(trainer, references["batches"])
        assert not any(hasattr(p, "expert") for p in trainer.get_model().parameters())
    run_on_ranks(on_rank, WORLD, data_dir, references)
