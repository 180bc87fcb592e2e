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
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedgenome.configs.errors import IncompatibleModelError
from fedgenome.configs.schema import ModelConfig
from fedgenome.shared.tokenizer import NUCLEOTIDES, A
from fedgenome.shared.tokenizer import N as N_ID
from fedgenome.shared.tokenizer import T as T_ID

Rope = tuple[torch.Tensor, torch.Tensor]
State = tuple[torch.Tensor, torch.Tensor]
"""What a mixer remembers of a sequence: attention's keys and values, or a mixer's convolution inputs."""


class Prior(Protocol):
    """A frozen next-base prior (``fedgenome.shared.markov_prior.MarkovPrior``)."""

    @property
    def fingerprint(self) -> str:
        """The name of the prior (what the weights trained with it must be used with)."""

    @property
    def order(self) -> int:
        """The longest context it reads: a position's prior depends on it and the order - 1 before it."""

    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., T, 4) of A, C, G, T after every position of idx (..., T)."""


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm or RMSNorm over the channel dimension."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model)
    return nn.LayerNorm(config.d_model)


def rotary_tables(positions: torch.Tensor, D: int, base: float) -> Rope:
    """Cosine and sine tables of rotary position embeddings at positions (..., T), each (..., T, D/2)."""
    inv_freq = base ** (-torch.arange(0, D, 2, device=positions.device, dtype=torch.float32) / D)
    angles = positions.float()[..., None] * inv_freq  # (..., T, D/2)
    return angles.cos(), angles.sin()


@dataclass(frozen=True)
class Continuation:
    """Rows that continue a remembered sequence of L positions: row b replaces it from ``start[b]`` on.

    Built by :meth:`GenomeLM.continue_from`; a new position attends to the remembered positions
    before its row's start and to its row's earlier new positions.
    """

    start: torch.Tensor  # (B,) the remembered sequence's position of each row's first token
    mask: torch.Tensor  # (B, 1, T, L + T) True where a new position may attend; L: the latest start


@dataclass(frozen=True)
class Memory:
    """One sequence as every block saw it (:meth:`GenomeLM.remember`)."""

    tokens: torch.Tensor  # (L,) its token ids
    states: tuple[State, ...]  # per block, what its mixer remembers


def positions_before(state: torch.Tensor, start: torch.Tensor, n: int) -> torch.Tensor:
    """The n positions of state (1, channels, L) before each start (B,) -> (B, channels, n); 0 before 0."""
    padded = F.pad(state[0], (n, 0))  # (channels, n + L)
    index = start[:, None] + torch.arange(n, device=start.device)  # (B, n)
    return padded[:, index].permute(1, 0, 2)  # (B, channels, n)


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

    def heads(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, H, T, D) of x (..., T, C), rotated to their positions."""
        T, C = x.shape[-2:]
        qkv = self.qkv(x).reshape(-1, T, 3 * C)  # (B, T, 3C)
        q, k, v = (t.view(-1, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in qkv.split(C, dim=2))  # (B, H, T, D) each
        return apply_rotary(q, rope), apply_rotary(k, rope), v

    def forward(self, x: torch.Tensor, rope: Rope, past: State | None = None,
                at: Continuation | None = None) -> torch.Tensor:
        *lead, T, C = x.shape
        q, k, v = self.heads(x, rope)  # (B, H, T, D) each
        if past is None or at is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )  # (B, H, T, D)
        else:  # continue a remembered sequence: its first L keys and values (1, H, L, D) come first
            L = at.mask.shape[-1] - T  # the positions any row reads
            keys, values = (torch.cat((old[..., :L, :].expand(len(q), -1, -1, -1), new), dim=2)
                            for old, new in zip(past, (k, v), strict=True))  # (B, H, L + T, D)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=at.mask)
        return self.proj(y.transpose(1, 2).reshape(*lead, T, C))  # (..., T, C)

    def remember(self, x: torch.Tensor, rope: Rope) -> State:
        """The keys and values (1, H, L, D) of a sequence x (1, L, C)."""
        _, k, v = self.heads(x, rope)
        return k, v


class CausalDepthwiseConv(nn.Conv1d):
    """Depthwise convolution over (..., channels, T) that sees only the current and earlier positions.

    Computed as K shifted multiply-adds, which on CPU is several times faster than ``conv1d``'s
    backward for a depthwise kernel of a few taps, and accepts any leading dimensions.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=True)
        self.bias: torch.Tensor  # always present

    def forward(self, u: torch.Tensor, *, before: torch.Tensor | None = None) -> torch.Tensor:
        """Filter u (..., channels, T), after ``before`` (..., channels, K - 1) or zeros.

        ``before`` is keyword-only: Opacus' hooks record a layer's positional inputs.
        """
        K, T = self.kernel_size[0], u.shape[-1]
        w = self.weight[:, 0, :].to(u.dtype)  # (channels, K)
        padded = F.pad(u, (K - 1, 0)) if before is None else torch.cat((before.to(u.dtype), u), dim=-1)
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

    def features(self, x: torch.Tensor, *, before: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projection (..., 3C, T) of x (..., T, C), and the gate q and filter input k * v (..., C, T)."""
        projected = self.in_proj(x).transpose(-1, -2)  # (..., 3C, T)
        q, k, v = self.featurizer(projected, before=before).chunk(3, dim=-2)  # (..., C, T) each
        return projected, q, k * v

    def forward(self, x: torch.Tensor, rope: Rope, past: State | None = None,
                at: Continuation | None = None) -> torch.Tensor:
        if past is None or at is None:
            _, q, kv = self.features(x)
            y = q * self.filter(kv)  # (..., C, T)
        else:  # continue a remembered sequence from the inputs (1, ., L) of its two convolutions
            width = (self.featurizer.kernel_size[0] - 1, self.filter.kernel_size[0] - 1)
            _, q, kv = self.features(x, before=positions_before(past[0], at.start, width[0]))
            y = q * self.filter(kv, before=positions_before(past[1], at.start, width[1]))
        return self.out_proj(y.transpose(-1, -2))  # (..., T, C)

    def remember(self, x: torch.Tensor, rope: Rope) -> State:
        """The inputs (1, 3C, L) and (1, C, L) of the two convolutions on a sequence x (1, L, C)."""
        projected, _, kv = self.features(x)
        return projected, kv


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
        self.mixer: ShortConvMixer | CausalSelfAttention = (
            ShortConvMixer(config) if conv else CausalSelfAttention(config))
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope, past: State | None = None,
                at: Continuation | None = None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), rope, past, at)
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
        rope = self.rope(torch.arange(idx.shape[-1], device=idx.device))  # (T, D/2) each
        prior = self.prior_log_probs(idx)
        x = self.inputs(idx, prior)  # (..., T, C)
        for block in self.blocks:
            x = block(x, rope)
        return self.logits(x, prior)

    def remember(self, idx: torch.Tensor) -> Memory:
        """What every block computes on one sequence idx (L,), for :meth:`continue_from`."""
        seq = idx[None]  # (1, L)
        rope = self.rope(torch.arange(seq.shape[-1], device=idx.device))
        x = self.inputs(seq, self.prior_log_probs(seq))  # (1, L, C)
        states = []
        for block in self.blocks:
            assert isinstance(block, Block)
            states.append(block.mixer.remember(block.norm1(x), rope))
            x = block(x, rope)
        return Memory(idx, tuple(states))

    def continue_from(self, memory: Memory, idx: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of rows idx (B, T) that replace the remembered sequence from start (B,) on.

        Equal to ``forward`` on the remembered sequence's first ``start[b]`` tokens followed by row
        b, at the row's positions, at the cost of the row's T positions only.
        """
        B, T = idx.shape
        L = int(start.max())  # no row reads a remembered position past its start
        pos = start[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        rope = tuple(t[:, None] for t in self.rope(pos))  # (B, 1, T, D/2) each
        new = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
        old = torch.arange(L, device=idx.device) < start[:, None]  # (B, L)
        at = Continuation(start, torch.cat((old[:, None, None, :].expand(B, 1, T, L),
                                            new.expand(B, 1, T, T)), dim=-1))  # (B, 1, T, L + T)
        prior = None
        if self.prior_in is not None:  # the prior reads the order - 1 remembered bases before the row
            width = self.prior.order if self.prior is not None else 0
            context = F.pad(memory.tokens, (width, 0), value=N_ID)[
                start[:, None] + torch.arange(width, device=idx.device)]  # (B, width)
            whole = self.prior_log_probs(torch.cat((context, idx), dim=-1))  # refuses a missing prior
            prior = None if whole is None else whole[:, width:]  # (B, T, 4)
        x = self.inputs(idx, prior)  # (B, T, C)
        for block, past in zip(self.blocks, memory.states, strict=True):
            x = block(x, rope, past, at)
        return self.logits(x, prior)

    def rope(self, positions: torch.Tensor) -> Rope:
        """Rotary tables (..., T, D/2) of the attention heads at positions (..., T)."""
        return rotary_tables(positions, self.config.d_model // self.config.n_head, self.config.rope_base)

    def prior_log_probs(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The Markov prior's log-probabilities (..., T, 4) of idx (..., T), None without a prior."""
        if self.prior_in is None:
            return None
        if self.prior is None:
            raise IncompatibleModelError("this model adds a Markov prior (model.markov_prior) but "
                                         "none is attached: build it with "
                                         "fedgenome.shared.markov_prior.build_model and the reference")
        return self.prior.log_probs(idx)

    def inputs(self, idx: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """The residual stream (..., T, C) entering the first block: embeddings plus the prior's."""
        x = self.embed(idx)  # (..., T, C)
        if prior is not None and self.prior_in is not None:
            x = x + self.prior_in(prior)
        return x

    def logits(self, x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits (..., T, V) from the last block's output x (..., T, C)."""
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
