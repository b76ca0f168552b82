"""First-generation Qwen-VL on current transformers, loading original checkpoints without remote code.

Module and parameter names are the original's (`transformer.wte`, `transformer.h.N.attn.c_attn`,
`transformer.h.N.mlp.w1/w2/c_proj`, `transformer.visual.*`, `lm_head`). Images arrive as pixel
values; their 256 resampler features overwrite the embeddings between `<img>` and `</img>`.

Deliberate differences from the original code (written down as the issue asks):
- attention uses PyTorch SDPA by default (`attn_implementation="eager"` gives the original's
  matmul + softmax in the activation dtype); on GPU SDPA picks its flash kernels;
- dynamic NTK rotary scaling and log-n attention scaling, which the original applies only at
  inference beyond `seq_length` (2048) tokens, are not implemented: sequences longer than that
  are refused in eval mode rather than computed differently;
- images are never read inside forward (the original decoded file paths from the token ids);
- the resampler's sin-cos table is a buffer that never trains (the original finetune.py switched its
  gradient back on when it unfroze attn_pool, so full fine-tuning there slowly changed it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration import QWenConfig
from .visual import VisionTransformer

IMAGE_TOKENS = 256
# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache` (and
# generate() passes `cache=`); 5.23 uses `past_key_values`. Accept both, return the installed name.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # computed in float32 and cast back, as the original
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding over the whole head dimension; x: (batch, heads, seq, dim), in float32."""
    dim = x.size(-1)
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    freqs = positions.float()[..., None] * inv_freq  # (batch, seq, dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (batch, 1, seq, dim)
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()).type_as(x)


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        proj = self.heads * self.head_dim
        self.c_attn = nn.Linear(config.hidden_size, 3 * proj)  # the only biased projection
        self.c_proj = nn.Linear(proj, config.hidden_size, bias=not config.no_bias)

    def forward(self, x, positions, mask, cache: Cache | None):
        b, s, _ = x.shape
        q, k, v = (
            t.view(b, s, self.heads, self.head_dim).transpose(1, 2) for t in self.c_attn(x).chunk(3, dim=-1)
        )
        q, k = (
            rotary(q, positions, self.config.rotary_emb_base),
            rotary(k, positions, self.config.rotary_emb_base),
        )
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.config.attn_dropout_prob if self.training else 0.0
        if self.config._attn_implementation == "eager":
            scores = q @ k.transpose(-2, -1) / self.head_dim**0.5
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            out = F.dropout(scores.softmax(dim=-1), dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.c_proj(out.transpose(1, 2).reshape(b, s, -1))


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig):
        super().__init__()
        half = config.intermediate_size // 2
        self.w1 = nn.Linear(config.hidden_size, half, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, half, bias=not config.no_bias)  # the gate
        self.c_proj = nn.Linear(half, config.hidden_size, bias=not config.no_bias)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QWenAttention(config, layer_idx)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, x, positions, mask, cache):
        x = x + self.attn(self.ln_1(x), positions, mask, cache)
        return x + self.mlp(self.ln_2(x))


class QWenPreTrainedModel(PreTrainedModel):
    config_class = QWenConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["QWenBlock", "VisualAttentionBlock"]
    _supports_sdpa = True

    def __init__(self, config: QWenConfig):
        super().__init__(config)
        # transformers guesses the loss from class names (…ForCausalLM) and warns on ours whenever
        # something reads model.loss_function (optimum's GPTQ loader reads every attribute); the
        # loss of QWenLMHeadModel is that causal-LM loss.
        self.loss_type = "ForCausalLM"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)


class QWenModel(QWenPreTrainedModel):
    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.emb_dropout_prob)
        self.h = nn.ModuleList(QWenBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.visual = VisionTransformer(**config.visual)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        pixel_values=None,
        use_cache=None,
        cache=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = cache if cache is not None else past_key_values
        hidden = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if pixel_values is not None and input_ids is not None:
            hidden = self.place_images(input_ids, hidden, pixel_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        b, s = hidden.shape[:2]
        if not self.training and past + s > self.config.seq_length:
            raise ValueError(
                f"{past + s} tokens exceed seq_length {self.config.seq_length}: dynamic NTK / log-n "
                "attention scaling beyond it are not implemented"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + s, device=hidden.device).expand(b, s)
        mask = causal_mask(attention_mask, b, s, past, hidden.device)
        if attention_mask is None and past == 0:  # packed rows: attention stays inside each sample
            mask = mask & same_sample(position_ids)
        hidden = self.drop(hidden)
        for block in self.h:
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(block.__call__, hidden, position_ids, mask, None)
            else:
                hidden = block(hidden, position_ids, mask, past_key_values if use_cache else None)
        return BaseModelOutputWithPast(
            last_hidden_state=self.ln_f(hidden), **{CACHE_FIELD: past_key_values if use_cache else None}
        )

    def place_images(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Overwrite the 256 embeddings between each <img> and </img> with that image's features."""
        start_id = self.config.visual["image_start_id"]
        starts = (input_ids == start_id).nonzero().tolist()
        if not starts:
            return hidden  # decoding steps after the prompt: the images are already in the cache
        ends = (input_ids == start_id + 1).nonzero().tolist()
        if len(starts) != len(ends) or len(starts) != pixel_values.size(0):
            raise ValueError(
                f"{len(starts)} <img> and {len(ends)} </img> tokens for {pixel_values.size(0)} images"
            )
        features = self.visual(pixel_values).to(hidden.dtype)
        hidden = hidden.clone()
        for k, ((row, a), (row_end, b)) in enumerate(zip(starts, ends, strict=True)):
            if row != row_end or b - a - 1 != IMAGE_TOKENS:
                raise ValueError(
                    f"image {k + 1}: the span between <img> and </img> holds {b - a - 1} tokens, "
                    f"not {IMAGE_TOKENS}"
                )
            hidden[row, a + 1 : b] = features[k]
        return hidden


def causal_mask(attention_mask, b: int, s: int, past: int, device) -> torch.Tensor:
    """Boolean (batch, 1, s, past + s): True where a query may attend (causal, and not padding)."""
    total = past + s
    mask = (
        torch.ones(s, total, dtype=torch.bool, device=device)
        .tril(diagonal=past)[None, None]
        .expand(b, 1, s, total)
    )
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -total:].bool()
        # A left-padding query would see no key at all (NaN in SDPA): let every query see itself.
        own = torch.zeros(s, total, dtype=torch.bool, device=device)
        own[torch.arange(s), past + torch.arange(s)] = True
        mask = mask | own
    return mask


def same_sample(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, 1, s, s): True where query and key belong to the same packed sample.

    Packed rows restart positions at 0 for each sample; a row without restarts is one sample and
    the mask is all True (plain causal attention).
    """
    starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
    sample = starts.cumsum(-1)
    return (sample[:, :, None] == sample[:, None, :])[:, None]


class QWenLMHeadModel(QWenPreTrainedModel, GenerationMixin):
    _tied_weights_keys: list[str] = []

    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # get/set_input_embeddings come from PreTrainedModel, through base_model_prefix ("transformer").
    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        pixel_values=None,
        use_cache=None,
        logits_to_keep: int = 0,
        cache=None,
        mm_token_type_ids=None,  # named so generate() accepts the shared batches; 1-D positions need none
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state if not logits_to_keep else out.last_hidden_state[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None
) -> torch.Tensor:
    """Next-token cross-entropy over labels != -100; summed and divided by `num_items` when the Trainer
    counts them across gradient-accumulation steps, else the mean."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
    if num_items is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum") / num_items


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM resolve `model_type: "qwen"` to these classes (no remote code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register("qwen", QWenConfig)
        AutoModelForCausalLM.register(QWenConfig, QWenLMHeadModel)
    except ValueError:  # already registered (or a future transformers ships its own "qwen")
        pass


register_auto_classes()
