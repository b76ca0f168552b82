"""Configuration of the first-generation Qwen-VL, with the original checkpoints' field names.

`config.json` of Qwen/Qwen-VL, Qwen-VL-Chat and Qwen-VL-Chat-Int4 loads as it is (`model_type:
"qwen"`; its `auto_map` is ignored: no remote code runs), and a saved config keeps those names.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# The published vision settings (448-px ViT-bigG-like encoder, 256-query resampler).
DEFAULT_VISUAL = {
    "heads": 16,
    "image_size": 448,
    "image_start_id": 151857,
    "layers": 48,
    "mlp_ratio": 4.9231,
    "output_dim": 4096,
    "patch_size": 14,
    "width": 1664,
}


class QWenConfig(PretrainedConfig):
    model_type = "qwen"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        emb_dropout_prob: float = 0.0,
        attn_dropout_prob: float = 0.0,
        layer_norm_epsilon: float = 1e-6,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 8192,
        scale_attn_weights: bool = True,
        use_cache: bool = True,
        kv_channels: int = 128,
        rotary_pct: float = 1.0,
        rotary_emb_base: float = 10000.0,
        intermediate_size: int = 22016,
        no_bias: bool = True,
        seq_length: int = 2048,
        visual: dict | None = None,
        tie_word_embeddings: bool = False,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.emb_dropout_prob = emb_dropout_prob
        self.attn_dropout_prob = attn_dropout_prob
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.scale_attn_weights = scale_attn_weights
        self.use_cache = use_cache
        self.kv_channels = kv_channels
        self.rotary_pct = rotary_pct
        self.rotary_emb_base = rotary_emb_base
        self.intermediate_size = intermediate_size
        self.no_bias = no_bias
        self.seq_length = seq_length
        self.visual = {**DEFAULT_VISUAL, **(visual or {})}
        if self.visual["output_dim"] != hidden_size:
            raise ValueError(
                f"visual.output_dim ({self.visual['output_dim']}) must equal hidden_size ({hidden_size}): "
                "image features replace token embeddings"
            )
        if self.visual["output_dim"] % 128:
            raise ValueError(
                "visual.output_dim must be a multiple of 128 (the resampler has output_dim // 128 heads)"
            )
        # The original's runtime switches (use_dynamic_ntk, use_logn_attn, use_flash_attn, bf16...) stay
        # as plain attributes, so a saved config still loads with the original code.
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        if attn_implementation is not None:
            self._attn_implementation = attn_implementation
