"""gmlp_lm: the dense all-MLP language model (gMLP, Liu et al. 2021) with causal spatial gating."""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqLanguageModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr
from omegaconf import II
from torch import nn

from ..distributed.expert_placement import exclude_experts_from_ddp
from ..modules.gmlp_block import GmlpBlock
from ..modules.spatial_projection import CausalSpatialProjection
from ..checkpoint.expert_state import ExpertCheckpointMixin
from .all_mlp import AllMlpDecoder, check_saved_context, resolve_context
from .size_flags import check_at_least, check_dropout, sized_by


@dataclass
class GmlpLanguageModelConfig(FairseqDataclass):
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    decoder_embed_dim: int = field(
        default=1024, metadata={"help": "model (embedding) dimension d_model"}
    )
    decoder_ffn_embed_dim: int = field(
        default=4096,
        metadata={
            "help": "width d_ffn of the channel projection U; the spatial gating unit splits "
            "it into two halves, so it must be even"
        },
    )
    decoder_layers: int = field(default=24, metadata={"help": "number of gMLP blocks"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "share the input embedding and the output projection"}
    )
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.max_target_positions")


def check_sizes(args) -> None:
    """The sizes and dropout an all-MLP model can be built with."""
    check_at_least("--decoder-embed-dim", args.decoder_embed_dim)
    check_at_least("--decoder-ffn-embed-dim", args.decoder_ffn_embed_dim, 2)
    check_at_least("--decoder-layers", args.decoder_layers)
    if args.decoder_ffn_embed_dim % 2 != 0:
        raise ValueError(
            f"--decoder-ffn-embed-dim must be even: the spatial gating unit splits it into two "
            f"halves; got {args.decoder_ffn_embed_dim}"
        )
    check_dropout(args.dropout)


def size_flags(args) -> dict:
    """The flags that size an all-MLP model's parameters, for an error that names them."""
    flags = {"--tokens-per-sample": args.max_target_positions,
             "--decoder-embed-dim": args.decoder_embed_dim,
             "--decoder-ffn-embed-dim": args.decoder_ffn_embed_dim,
             "--decoder-layers": args.decoder_layers}
    for name in ("smoe_expert_count", "moe_expert_count"):
        if safe_getattr(args, name, None) is not None:
            flags["--" + name.replace("_", "-")] = getattr(args, name)
    return flags


def dense_block(args, max_positions: int) -> GmlpBlock:
    mixer = CausalSpatialProjection(1, max_positions)
    return GmlpBlock(args.decoder_embed_dim, args.decoder_ffn_embed_dim, mixer, args.dropout)


@register_model("gmlp_lm", dataclass=GmlpLanguageModelConfig)
class GmlpLanguageModel(ExpertCheckpointMixin, FairseqLanguageModel):
    """The --arch gmlp_lm defaults are the paper's main-comparison size: d_model 1024, d_ffn
    4096."""

    @classmethod
    def build_model(cls, args, task):
        check_sizes(args)
        max_positions = resolve_context(args, task)
        with sized_by(size_flags(args)):
            blocks = cls.build_blocks(args, task, max_positions)
            model = cls(AllMlpDecoder(args, task.target_dictionary, blocks))
        exclude_experts_from_ddp(model)
        return model

    @classmethod
    def build_blocks(cls, args, task, max_positions: int) -> nn.ModuleList:
        return nn.ModuleList(dense_block(args, max_positions) for _ in range(args.decoder_layers))

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.check_state_dict(state_dict)
        return super().load_state_dict(state_dict, strict, model_cfg, args)

    def check_state_dict(self, state_dict) -> None:
        """Refuse, in words, a checkpoint whose shapes follow from flags other than this
        model's: torch would only report a size mismatch."""
        check_saved_context(self, state_dict)


@register_model_architecture("gmlp_lm", "gmlp_lm_tiny")
def gmlp_lm_tiny(args):
    """A few-minute CPU size."""
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 128)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 512)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 4)
    args.share_decoder_input_output_embed = safe_getattr(
        args, "share_decoder_input_output_embed", True
    )
