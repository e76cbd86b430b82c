"""Shared test helpers: build registered models without a data directory, run a function on\nseveral gloo ranks."""

import argparse
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from torch.utils._python_dispatch import TorchDispatchMode

import fairseq_smlp  # noqa: F401  (registers the models)
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection


def make_dictionary(num_words: int) -> Dictionary:
    dictionary = Dictionary()
    for index in range(num_words):
        dictionary.add_symbol(f"w{index}")
    return dictionary


def build_model(
    arch: str, num_words: int = 40, tokens_per_sample: int = 16, prediction_fraction=None,
    **overrides,
):
    """Build ``arch`` as fairseq-train would: the arch function fills what is not overridden.
    With ``prediction_fraction`` the task is a partial_prediction_lm one."""
    args = argparse.Namespace(
        arch=arch, tokens_per_sample=tokens_per_sample, max_target_positions=None, **overrides
    )
    ARCH_CONFIG_REGISTRY[arch](args)
    model_class = ARCH_MODEL_REGISTRY[arch]
    for name, value in vars(model_class.__dataclass()).items():
        if not hasattr(args, name) and not str(value).startswith("${"):
            setattr(args, name, value)
    dictionary = make_dictionary(num_words)
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    if prediction_fraction is not None:
        task.args = SimpleNamespace(
            tokens_per_sample=tokens_per_sample, prediction_fraction=prediction_fraction
        )
    return model_class.build_model(args, task)


def randomize_spatial_weights(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Replace the near-identity init of every spatial map, upper triangle included, with large
    random values, so that position mixing (and any leak of the future) is visible."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CausalSpatialProjection):
                weight = module.weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(function, world_size: int, *args) -> None:
    """Run ``function(rank, world_size, *args)`` in ``world_size`` processes joined in a gloo
    process group; an exception on any rank fails the caller."""
    mp.spawn(_rank_main, args=(function, world_size, free_port(), args), nprocs=world_size,
             join=True)


def _rank_main(rank, function, world_size, port, args):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        function(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def pack_experts_on_cpu(monkeypatch) -> None:
    """Route MoE layers through the packed layout of CUDA bf16, which torch's CPU grouped matrix
    product also runs in fp32."""
    from fairseq_smlp.modules import experts

    monkeypatch.setattr(experts, "PACKED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(experts, "PACKED_DTYPES", (torch.float32,))


def assign_as_on_a_device(monkeypatch) -> None:
    """Run the balanced assignment's fixed-work device method on the CPU too, in place of the
    compiled CPU auction."""
    from fairseq_smlp.modules import balanced_assignment

    monkeypatch.setattr(balanced_assignment, "_CPU_AUCTION", False)


# aten operators whose result the host must see (a scalar it reads, or an output whose size
# depends on the data), and lift_fresh, a tensor made from Python data (a copy from host memory
# when it is then written into a GPU tensor).
HOST_WAITS = {
    "_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
    "bincount", "unique", "_unique2", "unique_consecutive", "unique_dim", "item",
    "repeat_interleave", "equal", "lift_fresh",
}


class HostReads(TorchDispatchMode):
    """Records, in ``seen``, the operators run inside it that make the host wait."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_WAITS or (name == "index" and any(
                t is not None and t.dtype == torch.bool for t in args[1])):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))
