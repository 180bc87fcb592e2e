"""The genome language model, in one file: a causal, single-nucleotide LM (Evo 2-style tokens).

A stack of pre-norm residual blocks. Each block mixes along the sequence either with rotary-position
causal self-attention (``scaled_dot_product_attention``) or, every ``conv_every``-th block, with a
short Hyena-style mixer built from depthwise causal convolutions (a StripedHyena-style hybrid), then
applies an MLP. With ``markov_prior`` the next-base logits are the network's output plus the
log-probabilities of a **Markov prior**: the best-k Markov baseline of the public reference, a frozen
table (``shared/markov_prior.py``; not a parameter: never trained, noised or sent) that is also fed
into the residual stream. With the head's weights at zero (:meth:`GenomeLM.silence`) the model is
exactly that baseline, and the network learns what k-mers cannot see (repeats longer than k,
motifs, local composition).

Only layers that Opacus supports per sample are used (Embedding, Linear, LayerNorm / RMSNorm, and
a Conv1d subclass with an exact grad sampler in ``privacy/grad_samplers.py``), rotary tables are
computed on the fly (no buffers), and the output head is untied from the embedding (ghost clipping
refuses tied weights). Every layer accepts leading dimensions: an input (P, k, T) holds k windows of
each of P patients, and Opacus then gives one gradient per patient (dimension 0).

Notation: B batch (any leading dimensions, e.g. patients P x windows k), T positions,
C = d_model, H heads, D = C / H head size, V vocabulary (see ``shared/tokenizer.py``).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedgenome.configs.errors import IncompatibleModelError
from fedgenome.configs.schema import ModelConfig
from fedgenome.shared.tokenizer import NUCLEOTIDES, A
from fedgenome.shared.tokenizer import T as T_ID

Rope = tuple[torch.Tensor, torch.Tensor]


class Prior(Protocol):
    """A frozen next-base prior (``fedgenome.shared.markov_prior.MarkovPrior``)."""

    @property
    def fingerprint(self) -> str:
        """The name of the prior (what the weights trained with it must be used with)."""

    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., T, 4) of A, C, G, T after every position of idx (..., T)."""


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
        *lead, T, C = x.shape
        qkv = self.qkv(x).reshape(-1, T, 3 * C)  # (B, T, 3C)
        q, k, v = (t.view(-1, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in qkv.split(C, dim=2))  # (B, H, T, D) each
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(*lead, T, C))  # (..., T, C)


class CausalDepthwiseConv(nn.Conv1d):
    """Depthwise convolution over (..., channels, T) that sees only the current and earlier positions.

    Computed as K shifted multiply-adds, which on CPU is several times faster than ``conv1d``'s
    backward for a depthwise kernel of a few taps, and accepts any leading dimensions.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=True)
        self.bias: torch.Tensor  # always present

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        K, T = self.kernel_size[0], u.shape[-1]
        w = self.weight[:, 0, :].to(u.dtype)  # (channels, K)
        padded = F.pad(u, (K - 1, 0))  # (..., channels, T + K - 1)
        y = padded[..., K - 1 :] * w[:, K - 1 : K]  # tap K-1 weighs the current position
        for k in range(K - 1):
            y = y + padded[..., k : k + T] * w[:, k : k + 1]
        return y + self.bias.to(u.dtype)[:, None]  # (..., channels, T)


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
        u = self.featurizer(self.in_proj(x).transpose(-1, -2))  # (..., 3C, T)
        q, k, v = u.chunk(3, dim=-2)  # (..., C, T) each
        y = q * self.filter(k * v)  # (..., C, T)
        return self.out_proj(y.transpose(-1, -2))  # (..., T, C)


class MLP(nn.Module):
    """Position-wise feed-forward network."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (..., T, C)


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
        return x + self.mlp(self.norm2(x))  # (..., T, C)


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
        self.prior_in = nn.Linear(4, config.d_model) if config.markov_prior else None
        self.prior: Prior | None = None  # attached by attach_prior (shared/markov_prior.build_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "out_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        with torch.no_grad():
            # Start uniform over A, C, G, T (loss ln 4): other tokens are never targets, and at
            # -16 their 12 logits take 1e-6 of the probability (at -8 they cost 0.006 bits/base).
            self.head.bias.fill_(-16.0)
            self.head.bias[list(NUCLEOTIDES)] = 0.0

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (..., T, V) of the next token at every position of idx (..., T)."""
        T = idx.shape[-1]
        rope = rotary_tables(T, self.config.d_model // self.config.n_head, self.config.rope_base,
                             idx.device)  # (T, D/2) each
        x = self.embed(idx)  # (..., T, C)
        prior = None
        if self.prior_in is not None:
            if self.prior is None:
                raise IncompatibleModelError("this model adds a Markov prior (model.markov_prior) but "
                                             "none is attached: build it with "
                                             "fedgenome.shared.markov_prior.build_model and the reference")
            prior = self.prior.log_probs(idx)  # (..., T, 4) for A, C, G, T
            x = x + self.prior_in(prior)
        for block in self.blocks:
            x = block(x, rope)
        logits = self.head(self.norm_f(x))  # (..., T, V)
        if prior is None:
            return logits
        return logits + F.pad(prior, (A, self.config.vocab_size - T_ID - 1))  # (..., T, V)

    def attach_prior(self, prior: Prior) -> None:
        """Use ``prior`` (frozen, not part of the state dict) in every forward pass."""
        if self.prior_in is None:
            raise IncompatibleModelError("this model has no Markov prior (model.markov_prior = false)")
        self.prior = prior

    def silence(self) -> None:
        """Zero the head's weights: the next-base distribution is then exactly the prior's."""
        with torch.no_grad():
            self.head.weight.zero_()

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
