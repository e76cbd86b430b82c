"""smlp: the sparse all-MLP language model (Yu et al. 2022).

N1 dense gMLP blocks and N2 sparse blocks (sMoE token mixing + tMoE channel mixing), the sparse
ones spread evenly through the stack. Two routing strategies for the sMoE, one architecture each:
``smlp_deterministic`` (column chunk e to expert e) and ``smlp_partial`` (a gate reading the first
positions of each sequence, trained with --task partial_prediction_lm).
"""

from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture
from fairseq.utils import safe_getattr
from torch import nn

from ..modules.smoe import DeterministicSMoE, PartialPredictionSMoE
from ..modules.sparse_block import SparseMlpBlock
from ..modules.tmoe import TokenMoE
from ..partial_prediction import context_length, fraction_for_context
from ..checkpoint.layout import state_key
from .expert_flags import check_smoe_width, compile_routing_field, placement_for
from .gmlp_lm import GmlpLanguageModel, GmlpLanguageModelConfig, dense_block, gmlp_lm_tiny

SMOE_ROUTINGS = ["deterministic", "partial"]


@dataclass
class SmlpConfig(GmlpLanguageModelConfig):
    sparse_layers: int = field(
        default=12,
        metadata={
            "help": "number N2 of sparse blocks among the --decoder-layers (the other N1 are "
            "dense gMLP blocks), spread evenly, the last block always sparse"
        },
    )
    sparse_layer_indices: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma-separated 0-based indices of the sparse blocks, instead of spreading "
            "--sparse-layers evenly (e.g. '0,1' puts them first)"
        },
    )
    smoe_expert_count: int = field(
        default=16,
        metadata={
            "help": "experts of each sMoE (feature routing); must divide half of "
            "--decoder-ffn-embed-dim"
        },
    )
    moe_expert_count: int = field(
        default=16, metadata={"help": "experts of each tMoE (token routing, BASE layers)"}
    )
    compile_routing: bool = compile_routing_field()
    smoe_routing: ChoiceEnum(SMOE_ROUTINGS) = field(
        default="deterministic",
        metadata={
            "help": "sMoE routing: 'deterministic' (chunk e to expert e) or 'partial' (a gate "
            "on the context positions of --task partial_prediction_lm)"
        },
    )


def sparse_block_indices(num_layers: int, num_sparse: int) -> List[int]:
    """Spread ``num_sparse`` blocks evenly over ``num_layers``, ending on the last block: 2 of 4
    are blocks 1 and 3, 12 of 24 every other block."""
    if not 0 <= num_sparse <= num_layers:
        raise ValueError(
            f"--sparse-layers must lie between 0 and --decoder-layers ({num_layers}); "
            f"got {num_sparse}"
        )
    return [(k + 1) * num_layers // num_sparse - 1 for k in range(num_sparse)]


def parse_sparse_layer_indices(value: str, num_layers: int) -> List[int]:
    try:
        indices = sorted({int(item) for item in value.split(",")})
    except ValueError:
        indices = None
    if not indices or indices[0] < 0 or indices[-1] >= num_layers:
        raise ValueError(
            f"--sparse-layer-indices must be comma-separated integers between 0 and "
            f"{num_layers - 1} (--decoder-layers {num_layers}); got '{value}'"
        )
    return indices


def partial_routing_context(args, task) -> int:
    """Context positions of smlp_partial's router, from the task's --prediction-fraction."""
    fraction = safe_getattr(getattr(task, "args", None), "prediction_fraction", None)
    if fraction is None:
        raise ValueError(
            "--smoe-routing partial (smlp_partial) routes on the leading context positions of "
            "each sequence and must never be scored there: train and evaluate it with --task "
            "partial_prediction_lm"
        )
    if task.args.tokens_per_sample != args.max_target_positions:
        raise ValueError(
            f"smlp_partial routes on the first positions of {args.max_target_positions}-token "
            f"blocks and must see blocks of exactly that size: use --tokens-per-sample "
            f"{args.max_target_positions} (and no --context-window, which fairseq-eval-lm "
            f"takes off the blocks); got blocks of {task.args.tokens_per_sample}"
        )
    return context_length(args.max_target_positions, fraction)


@register_model("smlp", dataclass=SmlpConfig)
class SmlpLanguageModel(GmlpLanguageModel):
    @classmethod
    def build_blocks(cls, args, task, max_positions: int) -> nn.ModuleList:
        width = args.decoder_ffn_embed_dim // 2  # channels the spatial mixers see
        context = partial_routing_context(args, task) if args.smoe_routing == "partial" else None
        if safe_getattr(args, "sparse_layer_indices", None) is not None:
            sparse = set(parse_sparse_layer_indices(args.sparse_layer_indices, args.decoder_layers))
        else:
            sparse = set(sparse_block_indices(args.decoder_layers, args.sparse_layers))
        dims = (args.decoder_embed_dim, args.decoder_ffn_embed_dim)
        check_smoe_width(width, args.smoe_expert_count)
        smoe_placement = placement_for("--smoe-expert-count", args.smoe_expert_count)
        tmoe_placement = placement_for("--moe-expert-count", args.moe_expert_count)
        compiled = safe_getattr(args, "compile_routing", False)
        blocks = nn.ModuleList()
        for index in range(args.decoder_layers):
            if index not in sparse:
                blocks.append(dense_block(args, max_positions))
                continue
            if context is None:
                # Nothing but experts in it: the module is placed whole.
                smoe = smoe_placement.place(DeterministicSMoE(
                    width, args.smoe_expert_count, max_positions, smoe_placement))
            else:
                smoe = PartialPredictionSMoE(width, args.smoe_expert_count, max_positions, context,
                                             smoe_placement, compiled)
            tmoe = TokenMoE(*dims, args.moe_expert_count, tmoe_placement, compiled)
            blocks.append(SparseMlpBlock(*dims, smoe, tmoe, args.dropout))
        return blocks

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        # The task's, for the message of check_routing_context.
        model.prediction_fraction = safe_getattr(getattr(task, "args", None),
                                                 "prediction_fraction", None)
        return model

    def check_state_dict(self, state_dict) -> None:
        super().check_state_dict(state_dict)
        check_routing_context(self, state_dict)


def check_routing_context(model: nn.Module, state_dict) -> None:
    """A partial-prediction router is a (P x E) map over the first P positions: a checkpoint
    trained with another --prediction-fraction has other P, which would reach the user as a raw
    size mismatch."""
    for name, module in model.named_modules():
        saved = state_dict.get(f"{state_key(name)}.router.weight")
        if not isinstance(module, PartialPredictionSMoE) or saved is None:
            continue
        trained, wanted = saved.size(1), module.context_positions
        if trained != wanted:
            length = module.experts.max_positions
            raise ValueError(
                f"this checkpoint's partial-prediction routers read the first {trained} "
                f"positions of each {length}-token block (--prediction-fraction "
                f"{fraction_for_context(length, trained)} in training), but this task's "
                f"--prediction-fraction {getattr(model, 'prediction_fraction', None)} leaves "
                f"{wanted}: evaluate with --prediction-fraction "
                f"{fraction_for_context(length, trained)}"
            )


@register_model_architecture("smlp", "smlp_deterministic")
def smlp_deterministic(args):
    """Main-comparison size of the paper: d_model 1024, d_ffn 4096 (dataclass defaults)."""
    args.smoe_routing = safe_getattr(args, "smoe_routing", "deterministic")


@register_model_architecture("smlp", "smlp_partial")
def smlp_partial(args):
    args.smoe_routing = safe_getattr(args, "smoe_routing", "partial")


def smlp_tiny(args):
    """A few-minute CPU size: gmlp_lm_tiny's blocks, half of them sparse with 4 experts."""
    gmlp_lm_tiny(args)
    args.sparse_layers = safe_getattr(args, "sparse_layers", 2)
    args.smoe_expert_count = safe_getattr(args, "smoe_expert_count", 4)
    args.moe_expert_count = safe_getattr(args, "moe_expert_count", 4)


@register_model_architecture("smlp", "smlp_deterministic_tiny")
def smlp_deterministic_tiny(args):
    smlp_tiny(args)
    smlp_deterministic(args)


@register_model_architecture("smlp", "smlp_partial_tiny")
def smlp_partial_tiny(args):
    smlp_tiny(args)
    smlp_partial(args)
