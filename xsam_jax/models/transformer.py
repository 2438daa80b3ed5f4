"""A small pre-LN Transformer encoder classifier for 1-D signals.

The signal is cut into non-overlapping patches of `patch_size` positions, each patch is
linearly embedded (a ViT-style tokenizer, Dosovitskiy et al. 2021), a learned positional
embedding is added, and `depth` pre-LayerNorm encoder blocks (Xiong et al. 2020) follow:
`x + MHSA(LN(x))`, then `x + MLP(LN(x))` with a GELU MLP. A final LayerNorm and either the
mean over tokens or a learned CLS token feed a linear head. Sized for MNIST-1D
(L = 40, patch 4 -> 10 tokens) and flattened 8x8 digits (L = 64, patch 8 -> one token
per row).

References:
    Vaswani et al. Attention Is All You Need. NeurIPS 2017.
    Dosovitskiy et al. An Image is Worth 16x16 Words. ICLR 2021.
    Xiong et al. On Layer Normalization in the Transformer Architecture. ICML 2020.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from xsam_jax.models._layers import as_sequence, lecun_normal, linear, normal

POOLS = ("mean", "cls")


class EncoderBlock(nnx.Module):
    """Pre-LN self-attention and MLP sub-blocks, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, *, dropout: float, rngs: nnx.Rngs):
        """Builds the block.

        Args:
            dim: token width.
            num_heads: attention heads; must divide `dim`.
            mlp_ratio: hidden width of the MLP as a multiple of `dim`.
            dropout: dropout rate on attention weights and on both sub-block outputs.
            rngs: the parameter and dropout RNG streams.
        """
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads,
            dim,
            dropout_rate=dropout,
            deterministic=False,
            decode=False,
            kernel_init=lecun_normal,
            rngs=rngs,
        )
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = linear(dim, mlp_ratio * dim, rngs=rngs)
        self.fc2 = linear(mlp_ratio * dim, dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.dropout(self.attn(self.ln1(x)))
        y = self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        return x + self.dropout(y)


class TransformerClassifier(nnx.Module):
    """Patch-embedding Transformer encoder with a mean-pool or CLS-token head.

    Created in train mode (dropout active when `dropout > 0`); switch with `model.eval()` /
    `model.train()` or `nnx.view(model, deterministic=True)`.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_length: int = 40,
        in_channels: int = 1,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        pool: Literal["mean", "cls"] = "mean",
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            num_classes: output logits.
            input_length: signal length L; a multiple of `patch_size`.
            in_channels: channels C of the signal.
            patch_size: positions per token.
            dim: token width; a multiple of `num_heads`.
            depth: encoder blocks, >= 1.
            num_heads: attention heads.
            mlp_ratio: MLP hidden width as a multiple of `dim`.
            dropout: dropout rate in [0, 1) for attention weights, the token embedding and
                the sub-block outputs.
            pool: "mean" (average over tokens) or "cls" (a learned class token).
            rngs: the parameter and dropout RNG streams.
        """
        if patch_size < 1 or input_length < 1 or input_length % patch_size != 0:
            raise ValueError(
                f"input_length must be a positive multiple of patch_size >= 1, got "
                f"input_length={input_length}, patch_size={patch_size}"
            )
        if depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth}")
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"dim must be a multiple of num_heads >= 1, got dim={dim}, num_heads={num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.input_length = input_length
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.pool = pool
        num_tokens = input_length // patch_size + (pool == "cls")
        self.embed = linear(patch_size * in_channels, dim, rngs=rngs)
        init = normal(0.02)
        self.pos_embedding = nnx.Param(init(rngs.params(), (1, num_tokens, dim)))
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim))) if pool == "cls" else None
        self.embed_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List(
            [
                EncoderBlock(dim, num_heads, mlp_ratio, dropout=dropout, rngs=rngs)
                for _ in range(depth)
            ]
        )
        self.final_ln = nnx.LayerNorm(dim, rngs=rngs)
        self.head = linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of 1-D signals.

        Args:
            x: `(N, L)`, `(N, L, C)`, or `(N, H, W, C)` flattened row-major to length
                `H * W`; the length must equal `input_length`.

        Returns:
            `(N, num_classes)` logits.
        """
        x = as_sequence(x, self.in_channels)
        n, length, channels = x.shape
        if length != self.input_length:
            raise ValueError(
                f"x must have length input_length={self.input_length}, got shape {x.shape}"
            )
        tokens = self.embed(x.reshape(n, length // self.patch_size, self.patch_size * channels))
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...], (n, 1, tokens.shape[-1]))
            tokens = jnp.concatenate([cls, tokens], axis=1)
        tokens = self.embed_dropout(tokens + self.pos_embedding[...])
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.final_ln(tokens)
        pooled = tokens[:, 0] if self.pool == "cls" else tokens.mean(axis=1)
        return self.head(pooled)
