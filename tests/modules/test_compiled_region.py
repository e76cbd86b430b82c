"""Each routing region traces whole under torch.compile (fullgraph=True: a graph break fails)
and gives eager's outputs and gradients, on the path CUDA takes and on the CPU's. Traced with
the aot_eager backend, which runs the captured forward and backward graphs as they are: inductor
generates code for them (about 30 s a layer on 2 cores; benchmarks/compiled_regions.py times
it), and that code generation is torch's own."""

import contextlib
import copy

import pytest
import torch
from helpers import build_model

from fairseq_smlp.modules import compiled_region
from fairseq_smlp.modules.cuda_path import cuda_path_on_cpu
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.tmoe import TokenMoE

DIM, EXPERTS, VOCAB = 16, 4, 50


def moe(gate):
    return MoELayer(gate, BatchedFeedForwardExperts(EXPERTS, DIM, 32), EXPERTS)


LAYERS = {
    "top-1": lambda: moe(TopKGate(DIM, EXPERTS, 1, capacity_factor=0.75)),
    "top-2": lambda: moe(TopKGate(DIM, EXPERTS, 2, second_expert_policy="random")),
    "hash": lambda: moe(HashGate(VOCAB, EXPERTS, seed=1)),
    "balanced": lambda: moe(BalancedGate(DIM, EXPERTS)),
    "tMoE": lambda: TokenMoE(DIM, 32, EXPERTS),
    "partial sMoE": lambda: PartialPredictionSMoE(DIM, EXPERTS, 12, 3),
}


def training_step(layer, region, seed):
    """Outputs and gradients of one forward + backward through ``region``, with the random
    draws (top-2's second choices) seeded alike."""
    torch.manual_seed(seed)
    mixer = isinstance(layer, PartialPredictionSMoE)
    x = torch.randn(2, 12 if mixer else 20, DIM, requires_grad=True)
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[1, 17:] = True
    token_ids = torch.randint(VOCAB, (2, 20))
    args = (x,) if mixer else (x, None, token_ids, padding.reshape(-1))
    out = region(*args)
    parameters = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [x, *parameters])
    return out, grads


# Every layer on the path CUDA takes; on the CPU's, those whose CPU path has operators of its own
# (the auction, the causal product's autograd functions), not just another buffer layout.
CASES = [(name, "cuda") for name in LAYERS] + [
    (name, "cpu") for name in ("balanced", "tMoE", "partial sMoE")]


@pytest.mark.parametrize("name,path", CASES)
def test_the_region_compiles_whole_and_gives_eagers_results(name, path):
    torch.manual_seed(0)
    layer = LAYERS[name]().train()
    function = (layer.route_and_mix if isinstance(layer, PartialPredictionSMoE)
                else layer.gate_dispatch_combine)
    torch._dynamo.reset()
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager")
    with cuda_path_on_cpu() if path == "cuda" else contextlib.nullcontext():
        for seed in (1, 2):  # the second call reuses the compiled graph
            want_out, want_grads = training_step(layer, function, seed)
            got_out, got_grads = training_step(layer, compiled, seed)
            torch.testing.assert_close(got_out, want_out)
            for got, want in zip(got_grads, want_grads):
                torch.testing.assert_close(got, want)


@pytest.mark.parametrize("arch", ["transformer_lm_switch_tiny", "smlp_partial_tiny"])
def test_compile_routing_runs_every_region_compiled(monkeypatch, arch):
    """--compile-routing: each MoE layer and partial sMoE runs through its compiled region,
    with the eager model's outputs."""
    monkeypatch.setattr(compiled_region, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    partial = {"prediction_fraction": 0.8} if arch.startswith("smlp") else {}
    models = []
    for compile_routing in (False, True):
        torch.manual_seed(0)
        models.append(build_model(arch, decoder_layers=2, compile_routing=compile_routing,
                                  **partial).eval())
    tokens = torch.randint(4, 40, (2, 16))
    eager, compiled = (model(tokens)[0] for model in models)
    torch.testing.assert_close(compiled, eager)
    regions = [m.region for m in models[1].modules() if hasattr(m, "region")]
    assert regions and all(region.compiled_function is not None for region in regions)


def test_a_copy_of_a_compiled_layer_runs_its_own_parameters(monkeypatch):
    monkeypatch.setattr(compiled_region, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    # Hash routing weighs each token's expert 1: a bias added to the copy's experts adds to it.
    layer = MoELayer(HashGate(VOCAB, EXPERTS, seed=1),
                     BatchedFeedForwardExperts(EXPERTS, DIM, 32), EXPERTS,
                     compile_routing=True).eval()
    token_ids = torch.randint(VOCAB, (2, 20))
    x = torch.randn(2, 20, DIM)
    with torch.no_grad():
        layer(x, token_ids)  # compiles
        twin = copy.deepcopy(layer)
        twin.experts.fc2_bias.add_(1.0)
        torch.testing.assert_close(twin(x, token_ids), layer(x, token_ids) + 1.0)
