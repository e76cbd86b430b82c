"""--ddp-backend fully_sharded with experts spread over 4 gloo ranks, on CPU: 8 experts (two on
each rank) and 2 experts (each on two replicas).

fairscale's FSDP is built for real here (fairseq's own wrapping context, pointed at the CPU):
which instance and process group owns each parameter, and what every rank's -shardR checkpoint
holds. Its forward and backward need CUDA streams, so the gradient and the norm are checked
with FSDP's reduction simulated: the replicas' gradients averaged over the replica group, each
rank keeping its slice. Reference: legacy_ddp, tested against one process in
test_expert_parallel.py and test_data_parallel_training.py.
"""

import contextlib
import dataclasses
import traceback
from unittest import mock

import fairscale.nn
import pytest
import torch
import torch.distributed as dist
from fairscale.nn.data_parallel.fully_sharded_data_parallel import get_fsdp_instances
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import fsdp_enable_wrap, fsdp_wrap
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer
from helpers import build_model, make_dictionary, run_on_ranks

import fairseq_smlp
import fairseq_smlp.distributed.expert_placement as placement_module
from fairseq_smlp.checkpoint.layout import SHARDS_KEY
from fairseq_smlp.checkpoint.merge import consolidate, joined, merge_sharded_states
from fairseq_smlp.distributed.expert_placement import expert_placement
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE, SpatialExperts
from fairseq_smlp.trainer.grad_norm import clip_grad_norm_with_experts

USER_DIR = fairseq_smlp.__path__[0]
VOCAB, TOKENS_PER_SAMPLE = 40, 16
LM = ("language_modeling", "moe_cross_entropy")
ARCHS = {  # arch -> (task, criterion)
    "smlp_deterministic_tiny": LM,
    "smlp_partial_tiny": ("partial_prediction_lm", "partial_prediction_cross_entropy"),
    "transformer_lm_gshard_tiny": LM,
    "transformer_lm_switch_tiny": LM,
    "transformer_lm_base_tiny": LM,
    "transformer_lm_hash_tiny": LM,
}
CHECKPOINTED = ["smlp_deterministic_tiny", "transformer_lm_switch_tiny"]
WORLD_SIZE, EXPERT_COUNTS = 4, [8, 2]
EXPERT_MODULES = (BatchedFeedForwardExperts, SpatialExperts)
D, F, S, H, L, CONTEXT = 6, 8, 12, 8, 7, 2  # module sizes for the gradient checks
FULLY_SHARDED = ["--ddp-backend", "fully_sharded", "--use-sharded-state"]
LEGACY = ["--ddp-backend", "legacy_ddp"]


def training_config(data_dir, arch, world_size, rank, num_experts, backend_flags):
    task, criterion = ARCHS[arch]
    argv = [
        str(data_dir), "--user-dir", USER_DIR, "--arch", arch, "--task", task,
        "--criterion", criterion, "--decoder-layers", "2", "--tokens-per-sample",
        str(TOKENS_PER_SAMPLE), "--moe-expert-count", str(num_experts), "--optimizer", "adam",
        "--lr", "1e-3", "--cpu", "--seed", "1", "--distributed-world-size", str(world_size),
        *backend_flags,
    ]
    if arch.startswith("smlp"):
        argv += ["--smoe-expert-count", str(num_experts)]
    if world_size > 1:
        argv += ["--distributed-rank", str(rank), "--distributed-backend", "gloo"]
    return convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))


@contextlib.contextmanager
def fsdp_on_cpu(cfg):
    """fairseq-train's wrapping context for fully_sharded (fsdp_enable_wrap), with FSDP told to
    compute on the CPU (it assumes CUDA otherwise)."""
    enable_wrap = fairscale.nn.enable_wrap

    def on_cpu(**kwargs):
        return enable_wrap(compute_device=torch.device("cpu"), **kwargs)

    with mock.patch.object(fairscale.nn, "enable_wrap", on_cpu), \
            fsdp_enable_wrap(cfg.distributed_training):
        yield


def build(cfg):
    """The model as fairseq-train builds it for the configured --ddp-backend."""
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    if cfg.distributed_training.ddp_backend != "fully_sharded":
        return task, task.build_model(cfg.model)
    with fsdp_on_cpu(cfg):
        return task, fsdp_wrap(task.build_model(cfg.model))


def parameter_names(model):
    """A one-process model's parameter names (tied ones under each name) and those of its
    expert modules."""
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    experts = {joined(path, name) for path, module in model.named_modules()
               if isinstance(module, EXPERT_MODULES) for name, _ in module.named_parameters()}
    return names, experts


def owners(model):
    """state key of every parameter -> the FSDP instance holding it, from fairseq's checkpoint
    metadata; no key may belong to two instances."""
    owner = {}
    instances = get_fsdp_instances(model)
    for instance, entry in zip(instances, model.local_metadata_dict()["param_metadata"]):
        names = [name for parts in entry["params"].values() for name in parts["names"]]
        names += [tied for _, tied in entry["shared_param_info"]]
        for name in names:
            key = joined(entry["fsdp_path"], name)
            assert key not in owner, f"{key} in two FSDP instances"
            owner[key] = instance
    return owner


def check_ownership(arch, model, names, experts, data_parallel_group):
    """Every expert parameter in an unflattened FSDP instance over its replica group, still
    marked and with its gradient hook; every shared one in a flattened instance over the
    data-parallel group; none forgotten, none in two."""
    owner = owners(model)
    assert set(owner) == names, arch
    for name in names:
        instance = owner[name]
        if name not in experts:
            assert instance.process_group is data_parallel_group, name
            assert instance.flatten_parameters, name
            continue
        assert not instance.flatten_parameters, name
        for parameter in instance.params:
            placement = parameter.expert_placement
            assert parameter.expert and placement.fully_sharded, name
            assert placement.scale_gradient in parameter._backward_hooks.values(), name
            assert instance.process_group is placement.replica_group, name
            assert instance.world_size == placement.num_replicas, name


def check_refusal(data_dir, rank, world_size, num_experts):
    cfg = training_config(data_dir, "smlp_deterministic_tiny", world_size, rank, num_experts,
                          ["--ddp-backend", "fully_sharded"])
    with pytest.raises(ValueError, match=f"--smoe-expert-count {num_experts} spread over "
                                         f"{world_size} ranks cannot yet be held by --ddp-backend "
                                         f"fully_sharded without --use-sharded-state"):
        build(cfg)


def save_shard(data_dir, save_dir, arch, world_size, rank, num_experts):
    """A Trainer's checkpoint under fully_sharded, as fairseq's checkpoint_utils saves it."""
    cfg = training_config(data_dir, arch, world_size, rank, num_experts,
                          FULLY_SHARDED + ["--save-dir", str(save_dir)])
    task, model = build(cfg)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    assert trainer.checkpoint_suffix == f"-shard{rank}"
    assert trainer.should_save_checkpoint_on_current_rank
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(save_dir / f"{arch}{trainer.checkpoint_suffix}.pt"), {})


# --- the expert gradient and the norm under FSDP, with its reduction simulated -----------------

def gradient_cases(num_experts, generator):
    """case -> (builder of the module given a placement, this rank's input)."""
    def moe_layer(placement):
        gate = TopKGate(D, num_experts, 2, capacity_factor=1.0, second_expert_policy="all")
        return MoELayer(gate, BatchedFeedForwardExperts(num_experts, D, F), num_experts,
                        placement)

    return {
        "tMoE": (moe_layer, torch.randn(S, D, generator=generator)),
        "deterministic sMoE": (
            lambda placement: placement.place(DeterministicSMoE(H, num_experts, L, placement)),
            torch.randn(2, L, H, generator=generator)),
        "partial sMoE": (lambda placement: PartialPredictionSMoE(H, num_experts, L, CONTEXT,
                                                                 placement),
                         torch.randn(2, L, H, generator=generator)),
    }


def after_backward(build_module, placement, batch, rank):
    """The module (seeded weights) after a backward pass over this rank's batch."""
    torch.manual_seed(1)
    module = build_module(placement).train()
    output = module(batch)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(rank))
    (output * weights).sum().backward()
    return module


def rank_slice(tensor, index, count):
    """Slice ``index`` of ``count`` of a flattened tensor, as FSDP shards a parameter."""
    return tensor.reshape(-1).tensor_split(count)[index]


def stand_in(parameter, grad, index, count):
    """This rank's FSDP shard of ``parameter`` holding its slice of ``grad``, marks kept."""
    shard = torch.nn.Parameter(rank_slice(parameter.detach(), index, count).clone())
    shard.grad = rank_slice(grad, index, count).clone()
    for mark in ["expert", "expert_placement"]:
        if hasattr(parameter, mark):
            setattr(shard, mark, getattr(parameter, mark))
    return shard


def all_reduced(tensor, group=None):
    tensor = tensor.clone()
    dist.all_reduce(tensor, group=group)
    return tensor


def check_gradients_and_norm(rank, world_size, num_experts):
    """The expert hook under FSDP, then FSDP's averaging over the replicas, gives legacy_ddp's
    expert gradient; the norm over this rank's FSDP shards is legacy_ddp's, and so is the
    clipping."""
    legacy = expert_placement(num_experts)
    sharded = dataclasses.replace(legacy, fully_sharded=True)  # unwrapped: no fairseq context
    replicas = legacy.num_replicas
    generator = torch.Generator().manual_seed(10 + rank)  # every rank its own batch
    for case, (build_module, batch) in gradient_cases(num_experts, generator).items():
        legacy_params, sharded_params = (
            list(after_backward(build_module, placement, batch, rank).named_parameters())
            for placement in [legacy, sharded])
        fsdp_view, want = [], []
        for (name, old), (_, new) in zip(legacy_params, sharded_params):
            if hasattr(new, "expert"):
                # FSDP over the replica group: sum the replicas' gradients, divide by R.
                averaged = all_reduced(new.grad, legacy.replica_group) / replicas
                torch.testing.assert_close(averaged, old.grad, msg=f"{case} {name}")
                if replicas > 1:  # the hook itself communicates nothing
                    assert not torch.allclose(averaged, new.grad), f"{case} {name}"
                fsdp_view.append(stand_in(new, averaged, rank // legacy.group_size, replicas))
            else:
                # DDP (legacy) and FSDP (root instance) both average shared gradients.
                averaged = all_reduced(new.grad) / world_size
                old.grad = all_reduced(old.grad) / world_size
                fsdp_view.append(stand_in(new, averaged, rank, world_size))
            want.append(old)
        max_norm = 1e-3  # far below the norm: both clip
        legacy_norm = clip_grad_norm_with_experts(want, max_norm)
        fsdp_norm = clip_grad_norm_with_experts(
            fsdp_view, max_norm, aggregate_norm_fn=lambda norm: all_reduced(norm**2).sqrt())
        torch.testing.assert_close(fsdp_norm, legacy_norm, msg=case)
        for (name, old), new in zip(legacy_params, fsdp_view):
            index, count = ((rank // legacy.group_size, replicas) if hasattr(new, "expert")
                            else (rank, world_size))
            torch.testing.assert_close(new.grad, rank_slice(old.grad, index, count),
                                       msg=f"{case} clipped {name}")


def check_ownership_of_every_arch(data_dir, rank, world_size, num_experts, references):
    group = distributed_utils.get_data_parallel_group()
    for arch in ARCHS:
        _, model = build(training_config(data_dir, arch, world_size, rank, num_experts,
                                         FULLY_SHARDED))
        check_ownership(arch, model, *references[arch, num_experts], group)


def save_shards(data_dir, save_dir, rank, world_size, num_experts):
    for arch in CHECKPOINTED:
        save_shard(data_dir, save_dir / str(num_experts), arch, world_size, rank, num_experts)


def on_rank(rank, world_size, data_dir, save_dir, references):
    """Every behaviour for every expert count, in one spawn of the ranks (the slow part). Each
    rank writes 'ok' or its traceback per behaviour; the first failure stops the ranks, which
    could otherwise wait for each other in a collective forever."""
    for num_experts in EXPERT_COUNTS:
        for behaviour, check in [
            ("gradients", lambda: check_gradients_and_norm(rank, world_size, num_experts)),
            ("refusal", lambda: check_refusal(data_dir, rank, world_size, num_experts)),
            ("ownership", lambda: check_ownership_of_every_arch(
                data_dir, rank, world_size, num_experts, references)),
            ("shards", lambda: save_shards(data_dir, save_dir, rank, world_size, num_experts)),
        ]:
            outcome = save_dir / "outcomes" / f"{behaviour}-{num_experts}-rank{rank}"
            try:
                check()
            except BaseException:
                outcome.write_text(traceback.format_exc())
                raise
            outcome.write_text("ok")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dictionary")
    make_dictionary(VOCAB).save(str(directory / "dict.txt"))
    return directory


@pytest.fixture(scope="module")
def ranks_ran(data_dir, tmp_path_factory):
    """The single-process reference models and the directory the 4 ranks wrote to."""
    save_dir = tmp_path_factory.mktemp("fully_sharded")
    singles = {(arch, num_experts): build(training_config(data_dir, arch, 1, 0, num_experts,
                                                          LEGACY))[1]
               for arch in ARCHS for num_experts in EXPERT_COUNTS}
    references = {key: parameter_names(model) for key, model in singles.items()}
    for directory in [*map(str, EXPERT_COUNTS), "outcomes"]:
        (save_dir / directory).mkdir()
    try:
        run_on_ranks(on_rank, WORLD_SIZE, data_dir, save_dir, references)
    except Exception:  # reported by the test of the behaviour that failed
        pass
    return singles, save_dir


def assert_held_on_every_rank(save_dir, behaviour):
    for num_experts in EXPERT_COUNTS:
        for rank in range(WORLD_SIZE):
            outcome = save_dir / "outcomes" / f"{behaviour}-{num_experts}-rank{rank}"
            text = (outcome.read_text() if outcome.exists()
                    else "not reached: an earlier check failed")
            assert text == "ok", f"{num_experts} experts, rank {rank}:\n{text}"


def test_expert_gradients_and_the_norm_are_those_of_legacy_ddp(ranks_ran):
    assert_held_on_every_rank(ranks_ran[1], "gradients")


def test_spread_experts_are_refused_without_sharded_state(ranks_ran):
    assert_held_on_every_rank(ranks_ran[1], "refusal")


def test_every_parameter_belongs_to_its_instance_and_group(ranks_ran):
    assert_held_on_every_rank(ranks_ran[1], "ownership")


def test_merged_shards_are_the_model_of_one_process(ranks_ran):
    singles, tmp_path = ranks_ran
    assert_held_on_every_rank(tmp_path, "shards")
    for (arch, num_experts), single in singles.items():
        if arch not in CHECKPOINTED:
            continue
        # The merged -shardR files are the whole model one process builds with the same seed.
        save_dir = tmp_path / str(num_experts)
        assert {path.name for path in save_dir.glob(f"{arch}*")} == {
            f"{arch}-shard{r}.pt" for r in range(WORLD_SIZE)}
        merged_path = save_dir / f"{arch}-merged.pt"
        with pytest.raises(ValueError, match="give the merged file another name with --output"):
            consolidate(save_dir / f"{arch}.pt", save_dir / f"{arch}.pt")
        assert consolidate(save_dir / f"{arch}.pt", merged_path) == WORLD_SIZE
        (merged,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(merged_path)])
        got, want = merged.state_dict(), single.state_dict()
        assert got.keys() == want.keys(), arch
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{arch} {num_experts} experts: {key}"


def test_merge_refuses_other_checkpoints():
    with pytest.raises(ValueError, match="not the -shardR checkpoint of a --ddp-backend "
                                         "fully_sharded --use-sharded-state run"):
        merge_sharded_states([{"model": {}}])
    two_of_four = {"fsdp_metadata": {}, SHARDS_KEY: {"world_size": 4, "experts": {}}}
    with pytest.raises(ValueError, match="found 2 shard files of a 4-rank run"):
        merge_sharded_states([two_of_four, two_of_four])


class ForwardingWrapper(torch.nn.Module):
    """Stands where FSDP stands around a placement's experts: it runs them when called (FSDP
    gathers their parameters then) and, as FSDP does, hands any other attribute to them, so a
    method called past the wrapper runs, with FSDP's parameters never gathered."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_moe_reaches_its_experts_through_their_wrapper(arch, monkeypatch):
    wrappers = []

    def wrap(experts, placement):
        wrappers.append(ForwardingWrapper(experts))
        return wrappers[-1]

    monkeypatch.setattr(placement_module, "wrap_experts", wrap)
    fraction = 0.8 if ARCHS[arch][0] == "partial_prediction_lm" else None
    model = build_model(arch, num_words=VOCAB, tokens_per_sample=TOKENS_PER_SAMPLE,
                        prediction_fraction=fraction)
    model(torch.randint(4, VOCAB, (2, TOKENS_PER_SAMPLE)))
    assert wrappers, arch
    assert [wrapper.calls for wrapper in wrappers] == [1] * len(wrappers), arch
