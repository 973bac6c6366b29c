"""DrQ-v2 random shift augmentation: replicate-pad by ``pad``, crop back at a random offset.

Two implementations of the same function:
- :func:`shift_grid_sample`, drqv2's ``RandomShiftsAug`` (``F.grid_sample`` on the padded float
  image, bilinear, zero padding, ``align_corners=False``); sampling points fall exactly on pixel
  centres, so it is an integer crop up to float rounding;
- :func:`shift_crop`, the exact integer crop as one gather with clamped indices (clamping an
  index is replicate padding), on any dtype, so the agent shifts uint8 frames (4x less memory
  traffic than float) and never materialises the padded image.

Shifts are int64 [N, 2] in drqv2's grid order: column 0 shifts x (width), column 1 y (height),
each in [0, 2 * pad]; output pixel (i, j) is padded pixel (i + shift_y, j + shift_x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_shifts(
    n: int, pad: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample integer shifts, int64 [n, 2] (x, y), uniform in [0, 2 * pad]."""
    return torch.randint(0, 2 * pad + 1, (n, 2), device=device, generator=generator)


def shift_crop(
    x: torch.Tensor, shifts: torch.Tensor, pad: int = 4, channels_last: bool = False
) -> torch.Tensor:
    """Exact random shift of ``x`` [N, C, H, W] (any dtype) by ``shifts`` [N, 2] (x, y).

    With ``channels_last`` the result has channels_last strides (gathered straight into that
    layout, no extra copy); otherwise it is contiguous.
    """
    n, c, h, w = x.shape
    shifts = shifts.to(device=x.device, dtype=torch.long)
    rows = (torch.arange(h, device=x.device) + shifts[:, 1:2] - pad).clamp_(0, h - 1)  # [N, H]
    cols = (torch.arange(w, device=x.device) + shifts[:, 0:1] - pad).clamp_(0, w - 1)  # [N, W]
    if channels_last:
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        # advanced indices on dims 0, 2, 3 around a slice put the result in [N, H, W, C]
        return x[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
    index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def shift_grid_sample(x: torch.Tensor, shifts: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """drqv2's ``RandomShiftsAug.forward`` with given shifts; ``x`` float [N, C, H, H]."""
    n, _, h, w = x.size()
    assert h == w
    padding = tuple([pad] * 4)
    x = F.pad(x, padding, "replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, device=x.device, dtype=x.dtype)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2)
    base_grid = base_grid.unsqueeze(0).repeat(n, 1, 1, 1)
    shift = shifts.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 2)
    shift *= 2.0 / (h + 2 * pad)
    grid = base_grid + shift
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


class RandomShiftsAug(nn.Module):
    """Random shift by up to ``pad`` pixels per sample (fast exact crop, see :func:`shift_crop`)."""

    def __init__(self, pad: int = 4, channels_last: bool = False) -> None:
        super().__init__()
        self.pad = pad
        self.channels_last = channels_last

    def forward(
        self,
        x: torch.Tensor,
        shifts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Shift ``x`` [N, C, H, W] by ``shifts`` [N, 2], drawn with ``generator`` if not given."""
        if shifts is None:
            shifts = random_shifts(x.shape[0], self.pad, x.device, generator)
        return shift_crop(x, shifts, self.pad, self.channels_last)
