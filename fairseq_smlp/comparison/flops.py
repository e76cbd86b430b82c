"""Training FLOPs per token and parameter counts of every architecture this project trains,
computed from its fairseq configuration alone: what comparisons at equal compute are sized by.

Conventions (docs/flops.md writes out every formula):

- FLOPs are those of matrix products, 2 per multiply-add, as the code computes them at the full
  length T = --tokens-per-sample. The (T x T) spatial maps and attention scores are computed
  whole and then masked, so their causal upper half counts.
- Training is 3 x forward: the backward pass computes two products per forward product, the
  gradients of both operands.
- Not counted: embedding lookups, norms, activations, softmax, elementwise gating and scaling,
  and the balanced assignment (its auction and Sinkhorn warm start hold no matrix product).
  Routing is taken as ideally balanced: a token costs the k expert FFNs it is routed to, not a
  share of a capacity-padded buffer.
- Active parameters are those one token's forward reads: every shared parameter, whole, and k of
  the E experts of each token-routing MoE layer (k = 2 for top2, 1 otherwise). Every map of an
  sMoE is active: each token has feature columns in every expert's chunk.

    python -m fairseq_smlp.comparison.flops DATA_BIN [fairseq-train flags] [--json]
"""

import argparse
import json
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

from fairseq import options, tasks
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY

from ..models.all_mlp import resolve_context
from ..models.expert_flags import check_smoe_width, placement_for
from ..models.gmlp_lm import check_sizes
from ..models.smlp import parse_sparse_layer_indices, partial_routing_context, sparse_block_indices
from ..models.size_flags import check_at_least
from ..models.transformer_moe import expert_ffn_dim, moe_layer_indices

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)
# fairseq's Dictionary puts <pad> at index 1; learned positions start after it.
PAD_INDEX = 1
# Each forward product A B has two backward products: dL/dA = dL/dC B^T and dL/dB = A^T dL/dC.
BACKWARD_PRODUCTS_PER_FORWARD = 2
EXPERTS_PER_TOKEN = {"top1": 1, "top2": 2, "balanced": 1, "hash": 1}
# transformer_lm options that change the model in ways these formulas do not follow.
UNCOUNTED_TRANSFORMER_OPTIONS = {
    "adaptive_input": "--adaptive-input",
    "adaptive_softmax_cutoff": "--adaptive-softmax-cutoff",
    "character_embeddings": "--character-embeddings",
    "base_layers": "--base-layers",
    "decoder_layerdrop": "--decoder-layerdrop",
    "quant_noise_pq": "--quant-noise-pq",
}
# NormFormer options that fairseq-train's transformer_lm drops: its layers read a
# TransformerConfig, whose from_namespace keeps only the fields it declares.
DROPPED_TRANSFORMER_OPTIONS = {
    "scale_attn": "--scale-attn",
    "scale_fc": "--scale-fc",
    "scale_heads": "--scale-heads",
    "scale_resids": "--scale-resids",
}


@dataclass(frozen=True)
class ModelCosts:
    """What one configuration costs: FLOPs per token at T = tokens_per_sample, parameters."""

    arch: str
    task: str
    tokens_per_sample: int
    vocab_size: int
    forward_flops_per_token: float
    total_params: int
    active_params: int

    @property
    def train_flops_per_token(self) -> float:
        return (1 + BACKWARD_PRODUCTS_PER_FORWARD) * self.forward_flops_per_token

    def to_json(self) -> Dict:
        return {
            "arch": self.arch,
            "task": self.task,
            "train_flops_per_token": self.train_flops_per_token,
            "forward_flops_per_token": self.forward_flops_per_token,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "tokens_per_sample": self.tokens_per_sample,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class Part:
    """Forward FLOPs per token, parameters and active parameters of a piece of a model."""

    flops: Fraction
    params: int
    active_params: int

    def __add__(self, other: "Part") -> "Part":
        return Part(self.flops + other.flops, self.params + other.params,
                    self.active_params + other.active_params)

    def __rmul__(self, count: int) -> "Part":
        return Part(count * self.flops, count * self.params, count * self.active_params)


def shared(flops=0, params: int = 0) -> Part:
    """A part that every token uses whole."""
    return Part(Fraction(flops), params, params)


def total(parts: List[Part]) -> Part:
    return sum(parts, shared())


def linear(in_dim: int, out_dim: int, bias: bool = True) -> Part:
    return shared(2 * in_dim * out_dim, in_dim * out_dim + (out_dim if bias else 0))


def layer_norm(dim: int) -> Part:
    return shared(params=2 * dim)


def output_projection(in_dim: int, vocab_size: int, tied: bool) -> Part:
    """Features to logits; a tied projection is the token embedding, counted there."""
    projection = linear(in_dim, vocab_size, bias=False)
    return shared(projection.flops) if tied else projection


def ffn_experts(num_experts: int, per_token: int, dim: int, ffn_dim: int) -> Part:
    """E FFNs ``W2 act(W1 x + b1) + b2``, of which each token runs ``per_token``."""
    expert = linear(dim, ffn_dim) + linear(ffn_dim, dim)
    return Part(per_token * expert.flops, num_experts * expert.params,
                per_token * expert.active_params)


def spatial_maps(num_maps: int, width: int, length: int, context: int) -> Part:
    """``num_maps`` (context x context) maps with a bias per position, mixing ``width`` columns
    at ``length`` positions: each output sums ``length`` products, the masked half included."""
    return shared(2 * length * width, num_maps * (context * context + context))


# The all-MLP models: gmlp_lm and smlp.


def gmlp_block(dim: int, ffn_dim: int, mixer: Part) -> Part:
    """LN, U, the gating unit's LN on z2 and its token mixer, V."""
    half = ffn_dim // 2
    return layer_norm(dim) + linear(dim, ffn_dim) + layer_norm(half) + mixer + linear(half, dim)


def smoe(args, length: int, context: int) -> Part:
    width, experts = args.decoder_ffn_embed_dim // 2, args.smoe_expert_count
    check_smoe_width(width, experts)
    maps = spatial_maps(experts, width, length, context)
    if args.smoe_routing == "deterministic":
        return maps
    positions = partial_routing_context(args, SimpleNamespace(args=args))
    # W_r (P x E) scores each column once per sequence; its cost is shared by the sequence.
    router = shared(Fraction(2 * width * positions * experts, length), positions * experts)
    return maps + router


def sparse_block(args, length: int, context: int) -> Part:
    """A gMLP block with the sMoE as token mixer, then LN and the tMoE: BASE routing by
    (E x d) centroids, one expert per token."""
    dim, ffn_dim = args.decoder_embed_dim, args.decoder_ffn_embed_dim
    experts = placement_for("--moe-expert-count", args.moe_expert_count).num_experts
    return (gmlp_block(dim, ffn_dim, smoe(args, length, context)) + layer_norm(dim)
            + linear(dim, experts, bias=False) + ffn_experts(experts, 1, dim, ffn_dim))


def sparse_indices(args) -> List[int]:
    if getattr(args, "sparse_layer_indices", None) is not None:
        return parse_sparse_layer_indices(args.sparse_layer_indices, args.decoder_layers)
    return sparse_block_indices(args.decoder_layers, args.sparse_layers)


def all_mlp_costs(args, vocab_size: int, sparse: bool) -> Part:
    """Embedding, the blocks, the final LN and the output projection (no position embedding)."""
    check_sizes(args)
    length, dim = args.tokens_per_sample, args.decoder_embed_dim
    context = resolve_context(args, None)
    sparse_blocks = set(sparse_indices(args)) if sparse else set()
    dense = gmlp_block(dim, args.decoder_ffn_embed_dim,
                       spatial_maps(1, args.decoder_ffn_embed_dim // 2, length, context))
    blocks = [sparse_block(args, length, context) if index in sparse_blocks else dense
              for index in range(args.decoder_layers)]
    return (shared(params=vocab_size * dim) + total(blocks) + layer_norm(dim)
            + output_projection(dim, vocab_size, args.share_decoder_input_output_embed))


# fairseq's transformer_lm and the Transformer MoE baselines on it.


def check_transformer_options(args) -> None:
    for name, flag in UNCOUNTED_TRANSFORMER_OPTIONS.items():
        value = getattr(args, name, None)
        if value:
            raise ValueError(
                f"{flag} {value} changes the Transformer in ways the FLOPs and parameter "
                f"formulas do not follow; leave {flag} at its default to count this model"
            )
    for name, flag in DROPPED_TRANSFORMER_OPTIONS.items():
        if getattr(args, name, False):
            raise ValueError(
                f"{flag} never reaches the layers fairseq-train builds for transformer_lm (their "
                f"TransformerConfig keeps only the fields it declares), so the model would not "
                f"be what the flag asks for; leave {flag} off"
            )


def attention(args, length: int) -> Part:
    """Q, K, V and output projections, then per head the (T x T) scores q k^T and the weighted
    sum of values, each d / heads deep: 2 T d FLOPs per token each, over all heads."""
    dim = args.decoder_embed_dim
    return 4 * linear(dim, dim) + shared(2 * (2 * length * dim))


def transformer_layer(args, length: int, ffn: Part) -> Part:
    """Attention, its LN, the FFN (dense or MoE) and its LN."""
    return attention(args, length) + 2 * layer_norm(args.decoder_embed_dim) + ffn


def dense_ffn(args) -> Part:
    dim, ffn_dim = args.decoder_embed_dim, args.decoder_ffn_embed_dim
    return linear(dim, ffn_dim) + linear(ffn_dim, dim)


def moe_ffn(args) -> Part:
    dim = args.decoder_embed_dim
    experts = placement_for("--moe-expert-count", args.moe_expert_count).num_experts
    gate = shared() if args.moe_gate == "hash" else linear(dim, experts, bias=False)
    width = expert_ffn_dim(args)
    return gate + ffn_experts(experts, EXPERTS_PER_TOKEN[args.moe_gate], dim, width)


def positions(args) -> Part:
    if args.no_token_positional_embeddings or not args.decoder_learned_pos:
        return shared()  # none, or sinusoidal ones held in a buffer
    context = args.max_target_positions or args.tokens_per_sample  # as transformer_lm resolves it
    return shared(params=(context + PAD_INDEX + 1) * args.decoder_embed_dim)


def transformer_costs(args, vocab_size: int, moe: bool) -> Part:
    """fairseq's TransformerDecoder as transformer_lm builds it for these args."""
    check_transformer_options(args)
    length = args.tokens_per_sample
    dim, in_dim, out_dim = args.decoder_embed_dim, args.decoder_input_dim, args.decoder_output_dim
    tied = args.share_decoder_input_output_embed
    if tied and in_dim != out_dim:
        raise ValueError(
            f"--share-decoder-input-output-embed ties a (vocabulary x {in_dim}) embedding to an "
            f"output projection that reads {out_dim} features: set --decoder-input-dim and "
            f"--decoder-output-dim equal"
        )
    keep = args.decoder_layers_to_keep
    num_layers = len(keep.split(",")) if keep else args.decoder_layers
    for flag, value in [("--decoder-embed-dim", dim), ("--decoder-input-dim", in_dim),
                        ("--decoder-output-dim", out_dim),
                        ("--decoder-ffn-embed-dim", args.decoder_ffn_embed_dim),
                        ("--decoder-attention-heads", args.decoder_attention_heads),
                        ("--decoder-layers", num_layers)]:
        check_at_least(flag, value)
    moe_layers = set(moe_layer_indices(num_layers, args.moe_freq)) if moe else set()
    layers = [transformer_layer(args, length, moe_ffn(args) if i in moe_layers else dense_ffn(args))
              for i in range(num_layers)]
    part = shared(params=vocab_size * in_dim) + positions(args)
    if in_dim != dim:
        part += linear(in_dim, dim, bias=False)
    if args.layernorm_embedding:
        part += layer_norm(dim)
    part += total(layers)
    if args.decoder_normalize_before and not args.no_decoder_final_norm:
        part += layer_norm(dim)
    if out_dim != dim:
        part += linear(dim, out_dim, bias=False)
    return part + output_projection(out_dim, vocab_size, tied)


MODEL_FAMILIES = {
    "transformer_lm": lambda args, vocab: transformer_costs(args, vocab, moe=False),
    "transformer_lm_moe": lambda args, vocab: transformer_costs(args, vocab, moe=True),
    "gmlp_lm": lambda args, vocab: all_mlp_costs(args, vocab, sparse=False),
    "smlp": lambda args, vocab: all_mlp_costs(args, vocab, sparse=True),
}


def model_family(args) -> str:
    arch = getattr(args, "arch", None)
    family = ARCH_MODEL_NAME_REGISTRY.get(arch)
    if family not in MODEL_FAMILIES:
        what = f"a '{family}' model" if family else "not a registered architecture"
        raise ValueError(
            f"--arch {arch} is {what}; FLOPs and parameters are counted for the model families "
            f"{', '.join(MODEL_FAMILIES)} (e.g. --arch transformer_lm_gpt3_medium, gmlp_lm, "
            f"smlp_deterministic, transformer_lm_switch)"
        )
    return family


def with_model_defaults(args, family: str) -> argparse.Namespace:
    """A copy of ``args`` holding every field of the model's dataclass, as fairseq-train builds
    the model: the flags and the arch function's values where given, the dataclass defaults
    elsewhere (options.parse_args_and_arch leaves out the defaults of flags not given)."""
    resolved = argparse.Namespace(**vars(args))
    for name, default in vars(MODEL_DATACLASS_REGISTRY[family]()).items():
        interpolated = str(default).startswith("${")  # e.g. ${task.tokens_per_sample}
        if not name.startswith("_") and not interpolated and not hasattr(resolved, name):
            setattr(resolved, name, default)
    return resolved


def model_costs(args, vocab_size: int) -> ModelCosts:
    """Costs of the model that fairseq-train builds from ``args`` (options.parse_args_and_arch's
    namespace, with --task and --tokens-per-sample) over a ``vocab_size`` dictionary."""
    family = model_family(args)
    for name, flag in [("task", "--task"), ("tokens_per_sample", "--tokens-per-sample")]:
        if getattr(args, name, None) is None:
            raise ValueError(
                f"model_costs needs {flag} in the parsed arguments of --arch {args.arch}"
            )
    check_at_least("--tokens-per-sample", args.tokens_per_sample)
    if getattr(args, "output_dictionary_size", -1) >= 0:
        raise ValueError(
            f"--output-dictionary-size {args.output_dictionary_size} makes the output vocabulary "
            f"smaller than the input one; the formulas take one vocabulary: leave it at -1"
        )
    part = MODEL_FAMILIES[family](with_model_defaults(args, family), vocab_size)
    return ModelCosts(
        arch=args.arch, task=args.task, tokens_per_sample=args.tokens_per_sample,
        vocab_size=vocab_size, forward_flops_per_token=float(part.flops),
        total_params=part.params, active_params=part.active_params,
    )


def parse_training_args(argv: List[str]) -> argparse.Namespace:
    """fairseq-train's own parse of DATA_BIN and its flags, with this package as --user-dir
    unless one is given."""
    if not any(arg == "--user-dir" or arg.startswith("--user-dir=") for arg in argv):
        argv = [*argv, "--user-dir", PACKAGE_DIR]
    return options.parse_args_and_arch(options.get_training_parser(), input_args=argv)


def vocabulary_size(args) -> int:
    """The size of the task's target dictionary, read from DATA_BIN; no data is loaded."""
    if not Path(args.data.split(":")[0], "dict.txt").is_file():
        raise FileNotFoundError(
            f"DATA_BIN {args.data} holds no dict.txt; it must be a directory fairseq-preprocess "
            f"wrote (only its dictionary is read)"
        )
    task = tasks.setup_task(args)
    return len(task.target_dictionary)


def summary(costs: ModelCosts) -> str:
    return "\n".join([
        f"{costs.arch} (--task {costs.task}, T = {costs.tokens_per_sample}, vocabulary "
        f"{costs.vocab_size})",
        f"  training FLOPs per token  {costs.train_flops_per_token:,.0f} "
        f"(forward {costs.forward_flops_per_token:,.0f})",
        f"  parameters                {costs.total_params:,} total, {costs.active_params:,} "
        f"active per token",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_smlp.comparison.flops",
        usage="%(prog)s DATA_BIN [fairseq-train flags] [--json]",
        description="Training FLOPs per token and parameter counts of the model fairseq-train "
        "would build from the same flags (see docs/flops.md). Every flag but --json goes to "
        "fairseq's parser; DATA_BIN is read for its dictionary only.",
        allow_abbrev=False,
    )
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (the system.json of a comparison run)")
    own, fairseq_argv = parser.parse_known_args(argv)
    # fairseq and its plugins may print while they load and set up the task: keep stdout for
    # the result alone.
    with redirect_stdout(sys.stderr):
        args = parse_training_args(fairseq_argv)
        try:
            costs = model_costs(args, vocabulary_size(args))
        except (FileNotFoundError, ValueError) as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(json.dumps(costs.to_json()) if own.json else summary(costs))


if __name__ == "__main__":
    main()
