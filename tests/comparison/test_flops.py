"""FLOPs and parameter accounting against the models fairseq-train builds from the same flags:
FLOPs against torch's own count of the matrix products of one forward + backward, parameters
against the built model's, and the CLI against model_costs."""

import argparse
import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from helpers import make_dictionary
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fairseq_smlp.comparison.flops import main, model_costs, parse_training_args
from fairseq_smlp.modules.gates import HashGate
from fairseq_smlp.modules.moe_layer import MoELayer

REPO = Path(__file__).resolve().parents[2]
T, BATCH = 16, 4  # 64 tokens per batch, which the 4 experts of every token-routing layer divide
WORDS = 36  # plus fairseq's 4 special symbols
VOCAB = WORDS + 4
FIRST_WORD = 4  # ids below are <s>, <pad>, </s>, <unk>
SMALL = ("--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64", "--decoder-layers", "2")
LM = ("--task", "language_modeling")

# Each config is small, but reaches every layer kind its formulas have. Sizes: the _tiny archs
# (d_model 128, d_ffn 512, 4 experts) unless given.
CONFIGS = {
    # transformer_lm's own defaults: post-norm, no final norm, 512-wide input and output dims
    # around a 32-wide model (so both projections), sinusoidal positions, untied output.
    "transformer_lm": (*LM, "--arch", "transformer_lm", *SMALL, "--decoder-attention-heads", "4"),
    # The options that change its layers: tied, learned positions (and a context longer than T),
    # embedding LN, pre-norm with a final LN, no projections.
    "transformer_lm_options": (
        *LM, "--arch", "transformer_lm", *SMALL, "--decoder-attention-heads", "4",
        "--decoder-input-dim", "32", "--decoder-output-dim", "32",
        "--share-decoder-input-output-embed", "--decoder-learned-pos", "--layernorm-embedding",
        "--decoder-normalize-before", "--max-target-positions", "20",
    ),
    "gmlp_lm_tiny": (*LM, "--arch", "gmlp_lm_tiny", "--decoder-layers", "2"),
    # Untied, and a context longer than T: parameters for 24 positions, FLOPs for 16.
    "gmlp_lm": (*LM, "--arch", "gmlp_lm", *SMALL, "--max-target-positions", "24"),
    # Blocks 0 and 2 sparse, block 1 dense.
    "smlp_deterministic_tiny": (*LM, "--arch", "smlp_deterministic_tiny", "--decoder-layers", "3"),
    "smlp_deterministic_indices": (
        *LM, "--arch", "smlp_deterministic_tiny", "--decoder-layers", "2",
        "--sparse-layer-indices", "0", "--smoe-expert-count", "8",
    ),
    "smlp_partial_tiny": ("--task", "partial_prediction_lm", "--arch", "smlp_partial_tiny",
                          "--decoder-layers", "2"),
    "transformer_lm_gshard_tiny": (*LM, "--arch", "transformer_lm_gshard_tiny",
                                   "--decoder-layers", "2"),
    "transformer_lm_gshard_narrow_experts": (*LM, "--arch", "transformer_lm_gshard_tiny",
                                             "--decoder-layers", "2",
                                             "--moe-expert-ffn-dim", "96"),
    "transformer_lm_switch_tiny": (*LM, "--arch", "transformer_lm_switch_tiny",
                                   "--decoder-layers", "3", "--moe-freq", "1"),
    "transformer_lm_base_tiny": (*LM, "--arch", "transformer_lm_base_tiny",
                                 "--decoder-layers", "2"),
    "transformer_lm_hash_tiny": (*LM, "--arch", "transformer_lm_hash_tiny",
                                 "--decoder-layers", "2"),
}


@pytest.fixture(scope="module")
def dictionary_dir(tmp_path_factory):
    """A data directory holding only a dictionary: all fairseq's tasks read to build a model."""
    directory = tmp_path_factory.mktemp("dictionary")
    make_dictionary(WORDS).save(str(directory / "dict.txt"))
    return str(directory)


def parse(data: str, config: str) -> argparse.Namespace:
    return parse_training_args([data, *CONFIGS[config], "--tokens-per-sample", str(T),
                                "--dropout", "0"])


@functools.lru_cache(maxsize=None)
def built(data: str, config: str):
    """(args, model) with the model built by fairseq-train's own path from the parsed flags."""
    args = parse(data, config)
    cfg = convert_namespace_to_omegaconf(copy.deepcopy(args))
    task = tasks.setup_task(cfg.task)
    assert len(task.target_dictionary) == VOCAB
    torch.manual_seed(0)
    return args, task.build_model(cfg.model).train()


def balanced_tokens(model) -> torch.Tensor:
    """(BATCH, T) token ids: random words, or under hash routing words chosen so that every
    expert gets the same number of tokens, as the balanced and top-k gates' fixed capacities
    assume."""
    generator = torch.Generator().manual_seed(0)
    gates = [m for m in model.modules() if isinstance(m, HashGate)]
    if not gates:
        return torch.randint(FIRST_WORD, VOCAB, (BATCH, T), generator=generator)
    expert_of = gates[0].token_to_expert
    assert all(torch.equal(gate.token_to_expert, expert_of) for gate in gates)
    experts = gates[0].num_experts
    words = torch.arange(FIRST_WORD, VOCAB)
    per_expert = BATCH * T // experts
    tokens = []
    for expert in range(experts):
        candidates = words[expert_of[words] == expert]
        assert len(candidates) > 0, f"no word hashes to expert {expert}"
        tokens.append(candidates[torch.randint(len(candidates), (per_expert,),
                                               generator=generator)])
    tokens = torch.cat(tokens)[torch.randperm(BATCH * T, generator=generator)]
    return tokens.view(BATCH, T)  # (B, T)


def counted_train_flops(model, tokens: torch.Tensor):
    """torch's count of one forward + backward. The math attention backend runs attention as two
    batched products the counter sees (its fused CPU kernel is not in the counter's table)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens)[0].sum().backward()
    return counter.get_total_flops(), counter.get_flop_counts()["Global"]


def active_parameter_count(model) -> float:
    """Every parameter once, the experts of each MoE layer (tMoE or Transformer MoE) at k / E of
    their size for a gate choosing k experts per token."""
    share = {}
    for moe in (m for m in model.modules() if isinstance(m, MoELayer)):
        for param in moe.experts.parameters():
            share[id(param)] = getattr(moe.gate, "k", 1) / moe.num_experts
    return sum(param.numel() * share.get(id(param), 1) for param in model.parameters())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_train_flops_equal_torchs_count_of_one_forward_backward(dictionary_dir, config):
    args, model = built(dictionary_dir, config)
    tokens = balanced_tokens(model)
    counted, by_op = counted_train_flops(model, tokens)
    costs = model_costs(args, VOCAB)
    # Exact: every product the counter sees is in the formulas, and nothing else is in them
    # (the per-token router cost of smlp_partial is an integer at T = 16).
    by_op = {str(op): flops for op, flops in by_op.items()}
    assert costs.train_flops_per_token * tokens.numel() == counted, by_op
    assert costs.train_flops_per_token == 3 * costs.forward_flops_per_token


def test_hash_batch_is_balanced_so_the_buffer_is_the_ideal_one(dictionary_dir):
    """What the exact FLOPs comparison relies on for hash routing: the largest expert load, which
    sizes the buffer, is S / E."""
    _, model = built(dictionary_dir, "transformer_lm_hash_tiny")
    gate = next(m for m in model.modules() if isinstance(m, HashGate))
    loads = torch.bincount(gate.token_to_expert[balanced_tokens(model).reshape(-1)])
    assert loads.tolist() == [BATCH * T // gate.num_experts] * gate.num_experts


@pytest.mark.parametrize("config", list(CONFIGS))
def test_parameter_counts_equal_the_built_models(dictionary_dir, config):
    args, model = built(dictionary_dir, config)
    costs = model_costs(args, VOCAB)
    assert costs.total_params == sum(p.numel() for p in model.parameters())
    assert costs.active_params == active_parameter_count(model)


def test_a_tied_embedding_is_counted_once(dictionary_dir):
    _, model = built(dictionary_dir, "gmlp_lm_tiny")
    decoder = model.decoder
    assert decoder.output_projection.weight is decoder.embed_tokens.weight
    listed = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert model_costs(parse(dictionary_dir, "gmlp_lm_tiny"), VOCAB).total_params == (
        listed - VOCAB * 128)


def test_gmlp_and_smlp_flops_by_hand(dictionary_dir):
    """d 128, d_ffn 512, T 16, V 40. A gMLP block: U 2 d f, spatial map T f, V f d. A sparse
    block adds the tMoE's centroids 2 d E and one expert 4 d f. Output 2 d V (tied)."""
    d, f, vocab, experts = 128, 512, VOCAB, 4
    dense = 2 * d * f + T * f + f * d
    sparse = dense + 2 * d * experts + 4 * d * f
    output = 2 * d * vocab
    gmlp = model_costs(parse(dictionary_dir, "gmlp_lm_tiny"), VOCAB)
    assert gmlp.forward_flops_per_token == 2 * dense + output == 419_840
    smlp = model_costs(parse(dictionary_dir, "smlp_deterministic_tiny"), VOCAB)
    assert smlp.forward_flops_per_token == 2 * sparse + dense + output
    # The partial router: (P x E) over f / 2 columns once per sequence, P = 16 - floor(12.8) = 4.
    partial = model_costs(parse(dictionary_dir, "smlp_partial_tiny"), VOCAB)
    router = 2 * (f // 2) * 4 * experts / T
    assert partial.forward_flops_per_token == 2 * (sparse + router) + output


def test_top2_runs_two_experts_per_token_and_counts_two_active(dictionary_dir):
    top1 = model_costs(parse(dictionary_dir, "transformer_lm_base_tiny"), VOCAB)
    top2 = model_costs(parse(dictionary_dir, "transformer_lm_gshard_tiny"), VOCAB)
    d, f = 128, 512
    expert_flops, expert_params = 4 * d * f, 2 * d * f + f + d
    assert top2.forward_flops_per_token - top1.forward_flops_per_token == expert_flops
    assert top2.active_params - top1.active_params == expert_params
    assert top2.total_params == top1.total_params  # (d x E) gate weights against centroids


def test_cli_json_equals_model_costs(data_dir):
    flags = ["--task", "partial_prediction_lm", "--arch", "smlp_partial_tiny",
             "--tokens-per-sample", "40"]
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_smlp.comparison.flops", str(data_dir), *flags, "--json"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    printed = json.loads(result.stdout)  # stdout holds the object and nothing else
    vocab = len(Dictionary.load(str(data_dir / "dict.txt")))
    expected = model_costs(parse_training_args([str(data_dir), *flags]), vocab).to_json()
    assert printed == expected
    assert list(printed) == ["arch", "task", "train_flops_per_token", "forward_flops_per_token",
                             "total_params", "active_params", "tokens_per_sample", "vocab_size"]
    assert (printed["arch"], printed["task"], printed["tokens_per_sample"]) == (
        "smlp_partial_tiny", "partial_prediction_lm", 40)


def test_cli_summary_names_the_numbers(dictionary_dir, capsys):
    main([dictionary_dir, *CONFIGS["gmlp_lm_tiny"], "--tokens-per-sample", str(T)])
    out = capsys.readouterr().out
    costs = model_costs(parse(dictionary_dir, "gmlp_lm_tiny"), VOCAB)
    assert out.splitlines()[0] == f"gmlp_lm_tiny (--task language_modeling, T = {T}, vocabulary 40)"
    assert f"{costs.train_flops_per_token:,.0f}" in out and f"{costs.total_params:,}" in out


def test_an_arch_outside_the_families_is_a_clear_error(dictionary_dir, capsys):
    with pytest.raises(ValueError, match="--arch transformer is a 'transformer' model; FLOPs and "
                                         "parameters are counted for the model families "
                                         "transformer_lm, transformer_lm_moe, gmlp_lm, smlp"):
        model_costs(parse_training_args([dictionary_dir, "--arch", "transformer"]), VOCAB)
    with pytest.raises(ValueError, match="--arch gpt5 is not a registered architecture"):
        model_costs(argparse.Namespace(arch="gpt5", task="language_modeling",
                                       tokens_per_sample=T), VOCAB)
    with pytest.raises(SystemExit) as exit_info:
        main([dictionary_dir, *LM, "--arch", "lstm_lm", "--tokens-per-sample", str(T)])
    assert exit_info.value.code == 2
    assert "--arch lstm_lm is a 'lstm_lm' model" in capsys.readouterr().err


@pytest.mark.parametrize("data", ["", "dict.txt"])  # a directory without one, the file itself
def test_a_data_dir_without_dictionary_is_a_clear_error(tmp_path, capsys, data):
    (tmp_path / "bin").mkdir()
    (tmp_path / "dict.txt").write_text("w 1\n")
    data_bin = tmp_path / "bin" if not data else tmp_path / data
    with pytest.raises(SystemExit) as exit_info:
        main([str(data_bin), *CONFIGS["gmlp_lm_tiny"], "--tokens-per-sample", str(T), "--json"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: DATA_BIN {data_bin} holds no dict.txt; it must be a directory " \
           f"fairseq-preprocess wrote" in captured.err


@pytest.mark.parametrize("config,flags,message", [
    ("gmlp_lm_tiny", ["--decoder-layers", "0"], "--decoder-layers must be at least 1; got 0"),
    ("gmlp_lm_tiny", ["--decoder-embed-dim", "-8"], "--decoder-embed-dim must be at least 1; "
     "got -8"),
    ("gmlp_lm_tiny", ["--decoder-ffn-embed-dim", "0"], "--decoder-ffn-embed-dim must be at "
     "least 2; got 0"),
    ("gmlp_lm_tiny", ["--tokens-per-sample", "0"], "--tokens-per-sample must be at least 1; "
     "got 0"),
    ("smlp_deterministic_tiny", ["--moe-expert-count", "0"], "--moe-expert-count must be at "
     "least 1; got 0"),
    ("smlp_deterministic_tiny", ["--sparse-layer-indices", ""], "--sparse-layer-indices must "
     "be comma-separated integers between 0 and 2 (--decoder-layers 3); got ''"),
    ("transformer_lm_switch_tiny", ["--moe-expert-count", "-2"], "--moe-expert-count must be "
     "at least 1; got -2"),
    ("transformer_lm", ["--decoder-embed-dim", "0"], "--decoder-embed-dim must be at least 1; "
     "got 0"),
    ("transformer_lm", ["--decoder-layers", "-1"], "--decoder-layers must be at least 1; got -1"),
])
def test_sizes_no_model_has_are_refused_not_counted(dictionary_dir, config, flags, message):
    """Counted, they gave a model with no blocks, or negative parameter counts."""
    args = parse_training_args([dictionary_dir, *CONFIGS[config], "--tokens-per-sample", str(T),
                                *flags])
    with pytest.raises(ValueError, match=re.escape(message)):
        model_costs(args, VOCAB)


def test_options_the_formulas_do_not_follow_are_refused(dictionary_dir):
    args = parse_training_args([dictionary_dir, *CONFIGS["transformer_lm"],
                                "--adaptive-softmax-cutoff", "10,20"])
    with pytest.raises(ValueError, match="--adaptive-softmax-cutoff 10,20 changes the "
                                         "Transformer"):
        model_costs(args, VOCAB)
    args = parse_training_args([dictionary_dir, *CONFIGS["transformer_lm"],
                                "--share-decoder-input-output-embed", "--decoder-output-dim", "64"])
    with pytest.raises(ValueError, match="--decoder-input-dim and --decoder-output-dim equal"):
        model_costs(args, VOCAB)
    args = parse_training_args([dictionary_dir, *CONFIGS["transformer_lm_switch_tiny"],
                                "--scale-attn"])
    with pytest.raises(ValueError, match="--scale-attn never reaches the layers fairseq-train "
                                         "builds"):
        model_costs(args, VOCAB)
    # The reason: fairseq-train's own build of that model has no attention LN.
    cfg = convert_namespace_to_omegaconf(args)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    assert all(layer.attn_ln is None for layer in model.decoder.layers)
    args = parse_training_args([dictionary_dir, *LM, "--arch", "smlp_partial_tiny"])
    with pytest.raises(ValueError, match="train and evaluate it with --task partial_prediction_lm"):
        model_costs(args, VOCAB)
