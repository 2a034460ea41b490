"""Analytic FLOP counts of the transformer pieces, from a config and token counts.

Conventions match ``torch.utils.flop_counter``: a matmul of (m x k) by (k x n) is 2mkn,
bias adds, norms, activations and softmax are free, attention scores are counted for
the full (not causally masked) query x key product, as every kernel computes them.
"""
from __future__ import annotations


def linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def attention_core(queries: int, keys: int, heads: int, head_dim: int) -> int:
    """Q K^T and the weighted sum of V."""
    return 2 * 2 * queries * keys * heads * head_dim


def vit_encoder(tokens: int, hidden: int, intermediate: int, heads: int, layers: int) -> int:
    """A ViT/CLIP/BLIP-style encoder: full attention, two-matrix MLP."""
    per_layer = (4 * linear(tokens, hidden, hidden)
                 + attention_core(tokens, tokens, heads, hidden // heads)
                 + linear(tokens, hidden, intermediate) + linear(tokens, intermediate, hidden))
    return layers * per_layer


def patch_embedding(patches: int, channels: int, patch: int, hidden: int, temporal: int = 1) -> int:
    return linear(patches, channels * patch * patch * temporal, hidden)


def decoder_tokens(new: int, context: int, *, hidden: int, intermediate: int, heads: int,
                   kv_heads: int, head_dim: int, layers: int, mlp_matrices: int = 3) -> int:
    """``new`` tokens through a Llama/Qwen2-style decoder that attends to ``context`` keys
    (cached ones included). GQA keys/values are projected at kv_heads but attended at heads."""
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    projections = linear(new, hidden, q_dim) + 2 * linear(new, hidden, kv_dim) + linear(new, q_dim, hidden)
    mlp = mlp_matrices * linear(new, hidden, intermediate)
    return layers * (projections + mlp + attention_core(new, context, heads, head_dim))


def generation(prompt: int, generated: int, vocab: int, cached: int = 0, **decoder) -> tuple[int, int]:
    """(prefill, decode) FLOPs of greedy generation of ``generated`` tokens.

    Prefill runs the prompt (but its first ``cached`` positions, whose keys and values
    were reused) and produces the first token from the last position only; each further
    token is one single-token step over the growing cache.
    """
    hidden = decoder["hidden"]
    prefill = decoder_tokens(prompt - cached, prompt, **decoder) + linear(1, hidden, vocab) if generated else 0
    decode = sum(decoder_tokens(1, prompt + step, **decoder) + linear(1, hidden, vocab)
                 for step in range(1, generated))
    return prefill, decode


def map_pass(prompt: int, layer: int, *, hidden: int, heads: int, kv_heads: int, head_dim: int, layers: int,
             cached: int = 0, **decoder) -> int:
    """A prefill that stops inside decoder layer ``layer`` once the last query's attention
    row is known (a map-only pass): the layers before it in full, then that layer's
    query/key/value projections and one row of scores; no LM head. The first ``cached``
    positions' keys and values were reused, not computed."""
    new = prompt - cached
    before = decoder_tokens(new, prompt, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                            layers=layer, **decoder)
    projections = linear(new, hidden, heads * head_dim) + 2 * linear(new, hidden, kv_heads * head_dim)
    return before + projections + score_row(prompt, heads, head_dim)


def score_row(keys: int, heads: int, head_dim: int) -> int:
    """One query's attention scores over ``keys``, every head: what a map probe adds."""
    return 2 * keys * heads * head_dim


def qformer(queries: int, text: int, image_tokens: int, *, hidden: int, intermediate: int, heads: int,
            encoder_hidden: int, layers: int, cross_attention_frequency: int) -> int:
    """A BLIP-2/InstructBLIP Q-Former over one image: ``queries`` learned query tokens and
    ``text`` instruction tokens attend to each other in every layer; only the queries
    cross-attend to the ``image_tokens`` encoder outputs, in layers whose index is a
    multiple of ``cross_attention_frequency``; queries and text have separate two-matrix MLPs."""
    tokens = queries + text
    head_dim = hidden // heads
    self_attention = 4 * linear(tokens, hidden, hidden) + attention_core(tokens, tokens, heads, head_dim)
    cross_attention = (2 * linear(queries, hidden, hidden) + 2 * linear(image_tokens, encoder_hidden, hidden)
                       + attention_core(queries, image_tokens, heads, head_dim))
    mlp = linear(tokens, hidden, intermediate) + linear(tokens, intermediate, hidden)
    cross_layers = len(range(0, layers, cross_attention_frequency))
    return layers * (self_attention + mlp) + cross_layers * cross_attention
