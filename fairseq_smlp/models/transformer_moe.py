"""The paper's Transformer MoE baselines on fairseq's own transformer_lm: GShard (top-2), Switch
(top-1), BASE layers (balanced) and Hash layers. Every --moe-freq-th decoder layer has its FFN
replaced by an MoE layer; the rest of fairseq's decoder is used as it is.
"""

from dataclasses import dataclass, field

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer_lm import (
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    base_lm_architecture,
    transformer_lm_gpt3_medium,
)
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from fairseq.utils import safe_getattr
from torch import nn

from ..distributed.expert_placement import exclude_experts_from_ddp
from ..modules.experts import BatchedFeedForwardExperts
from ..modules.gates import (SECOND_EXPERT_POLICIES, BalancedGate, HashGate, TopKGate,
                             load_balancing_losses)
from ..modules.moe_layer import FairseqFFNMoE
from ..checkpoint.expert_state import ExpertCheckpointMixin
from .expert_flags import compile_routing_field, placement_for
from .routing_stats import routing_stats
from .size_flags import sized_by

MOE_GATES = ["top1", "top2", "balanced", "hash"]
HASH_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class TransformerMoELanguageModelConfig(TransformerLanguageModelConfig):
    moe_gate: ChoiceEnum(MOE_GATES) = field(
        default="top2",
        metadata={"help": "routing: top2 (GShard), top1 (Switch), balanced (BASE), hash (Hash)"},
    )
    moe_expert_count: int = field(default=16, metadata={"help": "experts in each MoE layer"})
    moe_expert_ffn_dim: int = field(
        default=0,
        metadata={"help": "hidden width of each expert's FFN (0: --decoder-ffn-embed-dim); "
                  "narrower experts let top-2 match the FLOPs of a dense FFN"},
    )
    moe_freq: int = field(
        default=2,
        metadata={"help": "replace the FFN of every N-th decoder layer (layers N-1, 2N-1, ...)"},
    )
    moe_capacity_factor: float = field(
        default=1.0,
        metadata={"help": "top1/top2: expert capacity in training, as a multiple of k ceil(S/E)"},
    )
    moe_second_expert_policy: ChoiceEnum(SECOND_EXPERT_POLICIES) = field(
        default="sampling", metadata={"help": "top2: how the second expert is used in training"}
    )
    moe_hash_seed: int = field(
        default=1, metadata={"help": "hash: seed of the random token-id to expert map"}
    )
    compile_routing: bool = compile_routing_field()


def identity(x):
    return x


class MoEDecoderLayer(TransformerDecoderLayerBase):
    """A fairseq decoder layer whose FFN is an MoE layer. fc1 and the activation pass the
    normalised input through and fc2 is the MoE (its experts hold their own two projections),
    so fairseq's forward, residuals and norms run unchanged.

    A gate that routes on the residual stream (BASE, as fairseq's BaseLayer) scores the FFN
    block's residual input: before --decoder-normalize-before's norm where there is one, handed
    over by a hook on that norm; the experts still run on the normalised input."""

    def __init__(self, cfg, moe: FairseqFFNMoE):
        if utils.safe_getattr(cfg, "scale_fc", False):
            raise ValueError("--scale-fc normalises inside the FFN and has no place in an MoE "
                             "layer")
        super().__init__(cfg, no_encoder_attn=True)
        self.activation_fn = identity
        self.activation_dropout_module = nn.Identity()
        self.fc2 = moe
        if self.normalize_before and getattr(moe.gate, "routes_on_residual_stream", False):
            self.final_layer_norm.register_forward_pre_hook(self.hand_residual_stream)

    def hand_residual_stream(self, final_layer_norm, args):
        self.fc2.routing_input = args[0]  # (T, B, C), the residual the FFN's output joins

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return nn.Identity()

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return nn.Identity()  # replaced by the MoE layer in __init__


def build_gate(args, vocab_size: int) -> nn.Module:
    experts, dim = args.moe_expert_count, args.decoder_embed_dim
    if args.moe_gate == "balanced":
        return BalancedGate(dim, experts)
    if args.moe_gate == "hash":
        if not HASH_SEEDS[0] <= args.moe_hash_seed <= HASH_SEEDS[1]:
            raise ValueError(f"--moe-hash-seed must be an integer from {HASH_SEEDS[0]} to "
                             f"{HASH_SEEDS[1]} (torch's seeds); got {args.moe_hash_seed}")
        return HashGate(vocab_size, experts, args.moe_hash_seed)
    k = 1 if args.moe_gate == "top1" else 2
    if experts < k:
        raise ValueError(f"--moe-expert-count {experts}: --moe-gate {args.moe_gate} sends every "
                         f"token to {k} experts, so it needs at least {k}")
    # A factor of E / k gives every expert room for every token, so that nothing is dropped; a
    # larger one (inf included) would only enlarge the buffers, past memory or int64.
    capacity_factor = min(args.moe_capacity_factor, experts / k)
    return TopKGate(dim, experts, k, capacity_factor, args.moe_second_expert_policy)


def expert_ffn_dim(args) -> int:
    width = utils.safe_getattr(args, "moe_expert_ffn_dim", 0)
    if width < 0:
        raise ValueError(
            f"--moe-expert-ffn-dim must be positive, or 0 for --decoder-ffn-embed-dim; got {width}")
    return width or args.decoder_ffn_embed_dim


def moe_layer_indices(num_layers: int, moe_freq: int):
    if not 1 <= moe_freq <= num_layers:
        raise ValueError(
            f"--moe-freq {moe_freq}: every --moe-freq-th of the {num_layers} layers "
            f"(--decoder-layers) is an MoE layer, so it must be between 1 and {num_layers}; a "
            f"larger value would leave the model without any MoE layer")
    return [i for i in range(num_layers) if (i + 1) % moe_freq == 0]


@register_model("transformer_lm_moe", dataclass=TransformerMoELanguageModelConfig)
class TransformerMoELanguageModel(ExpertCheckpointMixin, TransformerLanguageModel):
    @classmethod
    def build_model(cls, args, task):
        # Before any gate complains in its own words.
        placement = placement_for("--moe-expert-count", args.moe_expert_count)
        with sized_by(size_flags(args)):
            return cls.build_moe_model(args, task, placement)

    @classmethod
    def build_moe_model(cls, args, task, placement):
        model = super().build_model(args, task)
        cfg = TransformerConfig.from_namespace(args)
        activation = utils.get_activation_fn(args.activation_fn)
        for index in moe_layer_indices(args.decoder_layers, args.moe_freq):
            experts = BatchedFeedForwardExperts(
                args.moe_expert_count, args.decoder_embed_dim, expert_ffn_dim(args), activation,
            )
            if args.moe_gate == "balanced":
                # fairseq's BaseLayer starts every expert as the identity of its residual block.
                nn.init.zeros_(experts.fc2_weight)
            moe = FairseqFFNMoE(build_gate(args, len(task.source_dictionary)), experts,
                                args.moe_expert_count, placement,
                                compile_routing=safe_getattr(args, "compile_routing", False))
            # Wrapped as fairseq's TransformerDecoderBase.build_decoder_layer wraps its layers.
            layer = MoEDecoderLayer(cfg, moe)
            if cfg.checkpoint_activations:
                layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
            min_params = cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0
            model.decoder.layers[index] = fsdp_wrap(layer, min_num_params=min_params)
        exclude_experts_from_ddp(model)
        return model

    def __init__(self, decoder):
        super().__init__(decoder)
        # The token ids reach the MoE layers from a hook on the token embedding: it sees exactly
        # the tokens the decoder runs (the last position only under an incremental state), also
        # when fairseq's generator calls decoder.forward directly, past this model and any hook
        # on the decoder itself.
        decoder.embed_tokens.register_forward_pre_hook(self.hand_token_ids)

    def moe_layers(self):
        return [module for module in self.modules() if isinstance(module, FairseqFFNMoE)]

    def hand_token_ids(self, embed_tokens, args):
        tokens = args[0]  # (B, L)
        padding = tokens.eq(embed_tokens.padding_idx)
        for moe in self.moe_layers():
            moe.token_ids, moe.padding = tokens, padding  # (B, L): the layer routes batch-major
            # A layer that --decoder-layerdrop skips must not report its previous forward.
            moe.balance_terms, moe.stats = None, {}

    def forward(self, src_tokens, **kwargs):
        logits, extra = self.decoder(src_tokens, **kwargs)
        moe_layers = self.moe_layers()
        terms = [m.balance_terms for m in moe_layers if m.balance_terms is not None]
        extra["moe_gate_losses"] = load_balancing_losses(terms) if terms else []
        extra["routing_stats"] = routing_stats(self.decoder.layers)
        return logits, extra


def size_flags(args) -> dict:
    """The flags that size a Transformer MoE's parameters, for an error that names them."""
    return {"--decoder-embed-dim": args.decoder_embed_dim,
            "--decoder-ffn-embed-dim": args.decoder_ffn_embed_dim,
            "--moe-expert-ffn-dim": utils.safe_getattr(args, "moe_expert_ffn_dim", 0),
            "--decoder-layers": args.decoder_layers, "--moe-expert-count": args.moe_expert_count}


def moe_arch(args, gate: str) -> None:
    args.moe_gate = safe_getattr(args, "moe_gate", gate)


def tiny_transformer(args) -> None:
    """The CPU size of gmlp_lm_tiny: d_model 128, d_ffn 512, 4 layers, 4 heads, 4 experts."""
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 128)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 512)
    args.decoder_layers = safe_getattr(args, "decoder_layers", 4)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 4)
    args.moe_expert_count = safe_getattr(args, "moe_expert_count", 4)
    args.share_decoder_input_output_embed = safe_getattr(
        args, "share_decoder_input_output_embed", True
    )
    base_lm_architecture(args)


def register_sizes(gate: str, name: str):
    """Register ``name`` at the paper's main-comparison size (fairseq's gpt3_medium: d_model
    1024, d_ffn 4096, 24 layers, 16 heads) and ``name_tiny`` at the CPU size."""

    @register_model_architecture("transformer_lm_moe", name)
    def paper_size(args):
        moe_arch(args, gate)
        transformer_lm_gpt3_medium(args)

    @register_model_architecture("transformer_lm_moe", f"{name}_tiny")
    def tiny(args):
        moe_arch(args, gate)
        tiny_transformer(args)


register_sizes("top2", "transformer_lm_gshard")
register_sizes("top1", "transformer_lm_switch")
register_sizes("balanced", "transformer_lm_base")
register_sizes("hash", "transformer_lm_hash")
