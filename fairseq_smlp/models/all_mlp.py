"""The decoder shared by the all-MLP language models (gmlp_lm, smlp) and their context rule."""

from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import FairseqDropout
from fairseq.utils import safe_getattr
from torch import nn

from ..checkpoint.layout import state_key
from ..modules.spatial_gating import SpatialGatingUnit
from ..modules.spatial_projection import CausalSpatialProjection
from .routing_stats import routing_stats
from .size_flags import check_at_least


def check_context(length: int, context: int, what: str, fits: str = "") -> None:
    """Refuse inputs of ``length`` positions to a model of ``context``. ``what`` says what is
    too long, its ``{length}`` filled in only for the message; ``fits`` the flags that would
    fit (--tokens-per-sample ``context``)."""
    if length > context:
        raise ValueError(
            f"{what.format(length=length)} but this model's context is {context} tokens (the "
            f"--tokens-per-sample / --max-target-positions it was built with): an all-MLP model "
            f"mixes positions with fixed (T x T) matrices and cannot read longer inputs; use "
            f"{fits or f'--tokens-per-sample {context}'} or less"
        )


def resolve_context(args, task) -> int:
    """The model's fixed context T: --max-target-positions, else --tokens-per-sample.

    Spatial projections are (T x T) matrices, so unlike a Transformer the context is a size of
    the parameters. A task asking for longer samples than T (say fairseq-eval-lm with a larger
    --tokens-per-sample than in training) is an error here: fairseq would otherwise drop every
    over-long sample and report a perplexity over nothing.
    """
    task_args = getattr(task, "args", None)
    # --add-bos-token puts a beginning-of-sentence token before every block: one more position.
    bos = int(bool(safe_getattr(task_args, "add_bos_token", False)))
    if safe_getattr(args, "max_target_positions", None) is None:
        check_at_least("--tokens-per-sample", args.tokens_per_sample)
        args.max_target_positions = args.tokens_per_sample + bos
    check_at_least("--max-target-positions", args.max_target_positions)
    requested = safe_getattr(task_args, "tokens_per_sample", None)
    if requested is not None:
        check_at_least("--tokens-per-sample", requested)
        with_bos = " with --add-bos-token" if bos else ""
        check_context(requested + bos, args.max_target_positions,
                      f"--tokens-per-sample {requested}{with_bos} gives {{length}}-token inputs",
                      fits=f"--tokens-per-sample {args.max_target_positions - bos}{with_bos}")
    return args.max_target_positions


def check_saved_context(model: nn.Module, state_dict) -> None:
    """The context T is a size of every spatial map, so a checkpoint trained with another T
    would reach the user as a raw size mismatch."""
    for name, module in model.named_modules():
        saved = state_dict.get(f"{state_key(name)}.weight")
        if not isinstance(module, CausalSpatialProjection) or saved is None:
            continue
        trained, built = saved.size(-1), module.max_positions
        if trained != built:
            raise ValueError(
                f"this checkpoint's spatial maps are {trained} x {trained}: it was trained with a "
                f"{trained}-token context, and this model is built for {built} tokens "
                f"(--max-target-positions, else --tokens-per-sample). An all-MLP model's context "
                f"is a size of its parameters: load it into a model built with "
                f"--max-target-positions {trained}, which reads blocks of at most {trained} tokens"
            )


def build_embedding(dictionary, embed_dim: int) -> nn.Embedding:
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim**-0.5)
    nn.init.zeros_(embedding.weight[dictionary.pad()])
    return embedding


class AllMlpDecoder(FairseqIncrementalDecoder):
    """Token embedding, a stack of blocks that each map (B, L, D) to (B, L, D), a final
    LayerNorm and the output projection. There are no position embeddings: the spatial maps are
    position-specific.

    Generating, fairseq passes an ``incremental_state`` and every token so far; when every
    spatial gating unit can decode one position at a time (not smlp_partial, whose routing reads
    the first positions as a whole), only the newest token runs and the units keep the past.
    Otherwise every step recomputes the whole prefix."""

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
        # Read at every decoding step, so found once: the blocks do not change.
        self._gating_units = [unit for unit in blocks.modules()
                              if isinstance(unit, SpatialGatingUnit)]
        self._decodes_incrementally = all(unit.decodes_incrementally
                                          for unit in self._gating_units)

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), extra

    @property
    def decodes_incrementally(self) -> bool:
        return self._decodes_incrementally

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         **kwargs):
        check_context(prev_output_tokens.size(1), self.max_target_positions,
                      "the input is {length} tokens")
        decoding = incremental_state is not None
        if decoding and self.decodes_incrementally:
            prev_output_tokens = prev_output_tokens[:, -1:]  # the past is in the units' state
        else:
            incremental_state = None
        padding = prev_output_tokens.eq(self.embed_tokens.padding_idx)  # (B, L)
        x = self.dropout(self.embed_tokens(prev_output_tokens))  # (B, L, D)
        for block in self.blocks:
            x = block(x, incremental_state, padding)
        # "attn": fairseq's SequenceGenerator reads it; there is no attention to report. The
        # routing figures of a decoding step are left out: nothing logs them.
        stats = {} if decoding else routing_stats(self.blocks)
        return self.final_norm(x), {"attn": [None], "routing_stats": stats}

    def reorder_incremental_state_scripting(self, incremental_state, new_order) -> None:
        """Beam search's reordering, called at every step: fairseq's walks every module."""
        for unit in self._gating_units:
            unit.reorder_incremental_state(incremental_state, new_order)

    def output_layer(self, features, **kwargs):
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions
