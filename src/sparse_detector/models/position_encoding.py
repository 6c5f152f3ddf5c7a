"""Positional encodings of the feature map, computed from the padding mask (as official DETR)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import PositionEmbedding, check_choice


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the (normalised) row and column index of each valid pixel."""

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset  # added to the cumulative indices before normalising (Deformable DETR: -0.5)

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` (B, H, W) True = padding -> encoding (B, 2 * num_pos_feats, H, W)."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned row and column embeddings (up to 50 x 50 feature maps, as official DETR)."""

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        batch, height, width = mask.shape
        limit = self.row_embed.num_embeddings
        if height > limit or width > limit:
            raise ValueError(
                f"learned position embedding supports feature maps up to {limit}x{limit}, got {height}x{width}"
            )
        x_emb = self.col_embed(torch.arange(width, device=mask.device))
        y_emb = self.row_embed(torch.arange(height, device=mask.device))
        pos = torch.cat([x_emb.unsqueeze(0).expand(height, -1, -1), y_emb.unsqueeze(1).expand(-1, width, -1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)


def build_position_encoding(kind: str, hidden_dim: int, offset: float = 0.0) -> nn.Module:
    """``offset``: of the sine encoding's indices (official DETR 0, Deformable DETR -0.5)."""
    check_choice(kind, PositionEmbedding, "model.position_embedding")
    if kind == "learned":
        return PositionEmbeddingLearned(hidden_dim // 2)
    return PositionEmbeddingSine(hidden_dim // 2, normalize=True, offset=offset)
