"""Figures: training curves and attention maps over images (matplotlib, no display needed).

Every figure uses constrained layout and is saved with a tight bounding box, so no title or label is clipped.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

from pipeline.io import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str):
    """Train loss and top-1 after each epoch, one line per entry of ``histories``. The per-epoch top-1 is the
    training loop's ``val_top1``, which the train stage measures on the test split: labelled "test top-1"."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for label, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        ax1.plot(ep, [h["train_loss"] for h in hist], marker=".", label=label)
        ax2.plot(ep, [h["val_top1"] for h in hist], marker=".", label=label)
    ax1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax2.set(xlabel="epoch", ylabel="test top-1 (%)", title="test top-1 per epoch (test split)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return fig


def attention_grid(
    images: np.ndarray, maps: Sequence[np.ndarray], names: Sequence[str], titles: Sequence[str], suptitle: str
):
    """One row per image: the image, then each attention map upsampled and laid over it.

    images: (N, H, W, 3) uint8; maps: one (N, h, w) array per attention module (any resolution).
    """
    import torch
    import torch.nn.functional as F

    n, h, w, _ = images.shape
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False, layout="constrained")
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i], fontsize=7)
        for j, m in enumerate(maps):
            up = F.interpolate(
                torch.as_tensor(m[i])[None, None].float(), size=(h, w), mode="bilinear", align_corners=False
            )[0, 0].numpy()
            axes[i, j + 1].imshow(images[i])
            axes[i, j + 1].imshow(up, cmap="jet", alpha=0.5)
            if i == 0:
                axes[i, j + 1].set_title(textwrap.fill(names[j], 28), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(textwrap.fill(suptitle, max(24, int(11 * 1.9 * cols))), fontsize=9)  # ~11 characters an inch
    return fig


def png_bytes(fig) -> bytes:
    """``fig`` as a PNG, as ``save`` writes it; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return buf.getvalue()


def save(fig, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig))
