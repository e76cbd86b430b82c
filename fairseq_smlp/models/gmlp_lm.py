"""gmlp_lm: the dense all-MLP language model (gMLP, Liu et al. 2021) with causal spatial gating."""

from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.modules import FairseqDropout
from fairseq.utils import safe_getattr
from omegaconf import II
from torch import nn

from ..modules.gmlp_block import GmlpBlock


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


def check_context(length: int, context: int, what: str) -> None:
    if length > context:
        raise ValueError(
            f"{what} is {length} tokens but this model's context is {context} tokens (the "
            f"--tokens-per-sample / --max-target-positions it was built with): an all-MLP model "
            f"mixes positions with fixed (T x T) matrices and cannot read longer inputs; use "
            f"--tokens-per-sample {context} or less"
        )


def resolve_context(args, task) -> int:
    """The model's fixed context T: --max-target-positions, else --tokens-per-sample.

    Spatial projections are (T x T) matrices, so unlike a Transformer the context is a size of
    the parameters. A task asking for longer samples than T (say fairseq-eval-lm with a larger
    --tokens-per-sample than in training) is an error here: fairseq would otherwise drop every
    over-long sample and report a perplexity over nothing.
    """
    if safe_getattr(args, "max_target_positions", None) is None:
        args.max_target_positions = args.tokens_per_sample
    requested = safe_getattr(getattr(task, "args", None), "tokens_per_sample", None)
    if requested is not None:
        check_context(requested, args.max_target_positions, "--tokens-per-sample")
    return args.max_target_positions


def build_embedding(dictionary, embed_dim: int) -> nn.Embedding:
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim**-0.5)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    return embedding


class AllMlpDecoder(FairseqDecoder):
    """Token embedding, a stack of blocks that each map (B, L, D) to (B, L, D), a final
    LayerNorm and the output projection. There are no position embeddings: the spatial maps are
    position-specific."""

    def __init__(self, args, dictionary, blocks: nn.ModuleList):
        super().__init__(dictionary)
        self.max_target_positions = args.max_target_positions
        self.embed_tokens = build_embedding(dictionary, args.decoder_embed_dim)
        self.dropout = FairseqDropout(args.dropout, module_name=type(self).__name__)
        self.blocks = blocks
        self.final_norm = nn.LayerNorm(args.decoder_embed_dim)
        self.output_projection = nn.Linear(args.decoder_embed_dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, std=args.decoder_embed_dim**-0.5)

    def extract_features(self, prev_output_tokens, encoder_out=None, **kwargs):
        check_context(prev_output_tokens.size(1), self.max_target_positions, "the input")
        x = self.dropout(self.embed_tokens(prev_output_tokens))  # (B, L, D)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x), {}

    def output_layer(self, features, **kwargs):
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions


def check_even_ffn_dim(args) -> None:
    if args.decoder_ffn_embed_dim % 2 != 0:
        raise ValueError(
            f"--decoder-ffn-embed-dim must be even: the spatial gating unit splits it into two "
            f"halves; got {args.decoder_ffn_embed_dim}"
        )


@register_model("gmlp_lm", dataclass=GmlpLanguageModelConfig)
class GmlpLanguageModel(FairseqLanguageModel):
    """The --arch gmlp_lm defaults are the paper's main-comparison size: d_model 1024, d_ffn 4096."""

    @classmethod
    def build_model(cls, args, task):
        check_even_ffn_dim(args)
        max_positions = resolve_context(args, task)
        blocks = nn.ModuleList(
            GmlpBlock(
                args.decoder_embed_dim, args.decoder_ffn_embed_dim, max_positions, args.dropout
            )
            for _ in range(args.decoder_layers)
        )
        return cls(AllMlpDecoder(args, task.target_dictionary, blocks))


@register_model_architecture("gmlp_lm", "gmlp_lm_tiny")
def gmlp_lm_tiny(args):
    """A few-minute CPU size."""
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 128)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 512)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 4)
    args.share_decoder_input_output_embed = safe_getattr(
        args, "share_decoder_input_output_embed", True
    )
