"""ToMe bipartite soft matching (Bolya et al., ICLR 2023), shared by the kernel and the modules.

Tokens alternate into sets A (even) and B (odd); each A token finds its most similar B token
(cosine on the metric, usually the attention keys); the `r` most similar A tokens are merged
into their B partner as a size-weighted mean. Token 0 (the class token) is never merged. The
sizes feed ToMe's proportional attention (log size added to the attention logits).
"""

from __future__ import annotations

import torch


def bipartite_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` tokens of x (tokens, dim) → (tokens - r, dim); size is (tokens, 1) token counts.

    The output keeps the class token first, then the unmerged A tokens, then the B tokens.
    """
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[::2], metric[1::2]
    r = min(r, a.shape[0] - 1)
    scores = a @ b.transpose(-1, -2)
    scores[0, :] = float("-inf")  # protect the class token
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True)
    src_idx, unm_idx = order[:r], order[r:].sort().values
    dst_idx = node_idx[src_idx]

    weighted = x * size
    src_x, dst_x = weighted[::2], weighted[1::2]
    src_s, dst_s = size[::2], size[1::2]
    dim = x.shape[-1]
    dst_x = dst_x.index_add(0, dst_idx, src_x[src_idx])
    dst_s = dst_s.index_add(0, dst_idx, src_s[src_idx])
    merged_s = torch.cat([src_s[unm_idx], dst_s], dim=0)
    merged_x = torch.cat([src_x[unm_idx], dst_x], dim=0) / merged_s.expand(-1, dim)
    return merged_x.to(x.dtype), merged_s
