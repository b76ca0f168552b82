"""The first-generation vision encoder: a 448-px ViT (patch 14) and a 256-query cross-attention
resampler, with the original module names (`transformer.visual.conv1`, `...resblocks.N.attn.in_proj`,
`...attn_pool.attn`, `ln_post`, `proj`), so original weights load unchanged.

The encoder takes pixel values (preprocessed by the data pipeline: 448x448 bicubic, CLIP mean and
std); the original opened image files inside forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resize_pos_embed(pos: torch.Tensor, length: int) -> torch.Tensor:
    """(n*n, d) position table -> (length, d) by bicubic interpolation on the square grid, as the original."""
    src, tgt = int(math.sqrt(pos.size(0))), int(math.sqrt(length))
    if src == tgt:
        return pos
    grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE-style 2-D sin-cos table (grid*grid, dim) in float32, as the original computes it: the first
    half from the x (column) coordinate, the second from y (row), each as [sin, cos]."""
    coords = torch.arange(grid, dtype=torch.float32)
    gx, gy = torch.meshgrid(coords, coords, indexing="xy")

    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(dim // 2, gx), one_d(dim // 2, gy)], dim=1)


class VisualAttention(nn.Module):
    """Self-attention whose fused in_proj packs [q, k, v] per head (not per projection), as the original."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, length, width)
        b, n, _ = x.shape
        q, k, v = self.in_proj(x).view(b, n, self.heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)
        context = scores.softmax(dim=-1) @ v
        return self.out_proj(context.transpose(1, 2).reshape(b, n, -1))


class VisualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float = 1e-6):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.attn = VisualAttention(width, heads)
        hidden = int(width * mlp_ratio)  # the published 4.9231 truncates: 1664 -> 8192
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerBlocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(VisualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class Resampler(nn.Module):
    """256 learned queries attend to the patch features: one cross-attention, 2-D sin-cos positions."""

    def __init__(self, grid: int, dim: int, heads: int, kv_dim: int, eps: float = 1e-6):
        super().__init__()
        # A fixed table: a persistent buffer keeps the original state-dict key and can never train.
        self.register_buffer("pos_embed", sincos_2d(dim, grid), persistent=True)
        self.query = nn.Parameter(torch.zeros(grid * grid, dim))
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False) if kv_dim != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.ln_q = nn.LayerNorm(dim, eps=eps)
        self.ln_kv = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, patches, kv_dim)
        x = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # (patches, batch, dim), MultiheadAttention's layout
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.size(1), 1)
        # A buffer keeps the dtype it was loaded in (fp32 beside a GPTQ model's bf16): follow the activations.
        table = self.pos_embed.to(x.dtype)
        # Queries get the table at its own 16x16 size; keys get it resized to the patch grid.
        pos = resize_pos_embed(table, x.size(0))
        out = self.attn(q + table.unsqueeze(1), x + pos.unsqueeze(1), x, need_weights=False)[0]
        return out.permute(1, 0, 2)


class VisionTransformer(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        output_dim: int,
        n_queries: int = 256,
        **_ignored,
    ):
        super().__init__()
        self.image_size, self.grid = image_size, image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(n_queries, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = TransformerBlocks(width, layers, heads, mlp_ratio)
        self.attn_pool = Resampler(int(math.sqrt(n_queries)), output_dim, output_dim // 128, width)
        self.ln_post = nn.LayerNorm(output_dim, eps=1e-6)
        self.proj = nn.Parameter(output_dim**-0.5 * torch.randn(output_dim, output_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, 448, 448) -> (images, 256, output_dim)."""
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (images, grid*grid, width)
        x = x + resize_pos_embed(self.positional_embedding, x.size(1))
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(self.attn_pool(x)) @ self.proj
