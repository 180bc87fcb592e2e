"""The genome language model, in one file: a causal, single-nucleotide LM (Evo 2-style tokens).

A stack of pre-norm residual blocks. Each block mixes along the sequence either with rotary-position
causal self-attention (``scaled_dot_product_attention``) or, every ``conv_every``-th block, with a
short Hyena-style mixer built from depthwise causal convolutions (a StripedHyena-style hybrid), then
applies an MLP. Only layers that Opacus supports per sample are used (Embedding, Linear, LayerNorm /
RMSNorm, Conv1d), rotary tables are computed on the fly (no buffers), and the output head is untied
from the embedding (ghost clipping refuses tied weights).

Notation: B batch (one window per patient), T positions, C = d_model, H heads, D = C / H head size,
V vocabulary (see ``shared/tokenizer.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from configs.schema import ModelConfig
from shared.tokenizer import NUCLEOTIDES

Rope = tuple[torch.Tensor, torch.Tensor]


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm or RMSNorm over the channel dimension."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model)
    return nn.LayerNorm(config.d_model)


def rotary_tables(T: int, D: int, base: float, device: torch.device) -> Rope:
    """Cosine and sine tables of rotary position embeddings, each (T, D/2)."""
    inv_freq = base ** (-torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)  # (D/2,)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate each (first half, second half) channel pair of x (B, H, T, D) by its position's angle."""
    cos, sin = (t.to(x.dtype) for t in rope)  # (T, D/2)
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class CausalDepthwiseConv(nn.Conv1d):
    """Depthwise Conv1d over (B, channels, T) that sees only the current and earlier positions."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return super().forward(u)[..., : u.shape[-1]]  # drop the right padding: causal


class ShortConvMixer(nn.Module):
    """Hyena-style mixer with short explicit filters: y = q * filter(k * v), all causal."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C = config.d_model
        self.in_proj = nn.Linear(C, 3 * C)
        self.featurizer = CausalDepthwiseConv(3 * C, 3)  # short conv over q, k, v
        self.filter = CausalDepthwiseConv(C, config.conv_kernel)  # the mixing filter
        self.out_proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        u = self.featurizer(self.in_proj(x).transpose(1, 2))  # (B, 3C, T)
        q, k, v = u.chunk(3, dim=1)  # (B, C, T) each
        y = q * self.filter(k * v)  # (B, C, T)
        return self.out_proj(y.transpose(1, 2))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward network."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: sequence mixer, then MLP."""

    def __init__(self, config: ModelConfig, *, conv: bool) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.mixer: nn.Module = ShortConvMixer(config) if conv else CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))  # (B, T, C)


class GenomeLM(nn.Module):
    """Causal next-base language model over single-nucleotide tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        every = config.conv_every
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config, conv=every > 0 and (i + 1) % every == 0) for i in range(config.n_layer)
        )
        self.norm_f = make_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "out_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # Start uniform over A, C, G, T (loss ln 4): other tokens are never targets.
        with torch.no_grad():
            self.head.bias.fill_(-8.0)
            self.head.bias[list(NUCLEOTIDES)] = 0.0

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the next token at every position of idx (B, T)."""
        T = idx.shape[1]
        rope = rotary_tables(T, self.config.d_model // self.config.n_head, self.config.rope_base,
                             idx.device)  # (T, D/2) each
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.norm_f(x))  # (B, T, V)

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
