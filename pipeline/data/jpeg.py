"""Encoded-image data sets (ImageNet's ``jpeg`` format): how each split is stored, decoded and evaluated.

Evaluation follows torchvision's reference protocol (``references/classification``): the image decoded at
full resolution, ``Resize(256)`` (shorter side, bilinear, antialiased), then the ``CenterCrop(224)``
(``eval_view``, built on torchvision's own functions; ``preprocess.resize`` plays 256 and
``preprocess.image_size`` 224). Stored shards keep shorter side 256 for training; the test split is stored as
the exact 224 centre crop of the full-resolution Resize(256), losslessly, so evaluation is torchvision's
reference protocol bit for bit:

- train: shorter side -> ``resize``, JPEG at ``quality``; training reads it through the random-resized-crop
  augmentation, and train images evaluated (those a search holds out) through ``eval_view`` of the stored
  JPEG;
- test: ``eval_view`` of the original, decoded fully (no JPEG draft, no reducing gap), as PNG; read back as
  is, with no further resizing.

The manifest records this (``encoding``: ``{"train": "jpeg", "test": "png"}``, ``eval_protocol`` with the
Pillow/torchvision versions that made the shards: "bit for bit" is against the reference run with that
Pillow); ``pipeline.data.manifest``'s ``load_split`` and ``ray_dataset`` decode accordingly and give the
same evaluation inputs. A manifest without ``encoding`` (older shards) has both splits as JPEG; both are then
evaluated through ``eval_view``.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.config import ImageNetPreprocessCfg

from .errors import DataError

ENCODING = {"train": "jpeg", "test": "png"}
EVAL_PROTOCOL = (
    "torchvision reference evaluation (references/classification): Resize(resize) (shorter side, bilinear, "
    "antialiased) of the image decoded at full resolution, then CenterCrop(image_size)"
)


def eval_view(img, resize: int, size: int):
    """The evaluation input of a PIL image: ``Resize(resize)`` then ``CenterCrop(size)``, with torchvision's
    own functions (the defaults of ``torchvision.transforms.Resize``: bilinear, antialiased), so it is the
    reference protocol (256 -> 224 for ImageNet) by construction."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return F.center_crop(img, [size, size])


def decode_images(
    blobs: list[bytes], size: int, resize: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Stored images -> (N, size, size, 3) uint8, each decoded at full resolution (no draft).

    - ``rng``: the ImageNet training augmentation of He et al. 2016 / torchvision -- a random crop of 8-100 %
      of the area with aspect ratio 3/4-4/3, resized to ``size`` (bilinear, antialiased), flipped horizontally
      half the time. Decoded with ``torchvision.io.decode_jpeg`` and cropped as a tensor: 1.4x Pillow's images
      per core (benchmarks/stream.py); training needs no bit-equality with any reference;
    - else ``resize``: the evaluation view (``eval_view``: Resize(resize) + CenterCrop(size)) of the stored
      image (a JPEG-stored split, e.g. the train images a search holds out), through Pillow as the reference;
    - neither: the stored images are the evaluation input already (the PNG test split), taken as they are.
    """
    if rng is not None:
        return _augmented(blobs, size, rng)
    from PIL import Image

    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, b in enumerate(blobs):
        with Image.open(io.BytesIO(b)) as im:
            img = im.convert("RGB")
        if resize is not None:
            img = eval_view(img, resize, size)
        elif img.size != (size, size):
            raise DataError(f"a stored evaluation image is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
        out[i] = np.asarray(img)
    return out


def crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop`` box (x0, y0, width, height): 8-100 % of the area, aspect 3/4-4/3, ten
    tries, else the centre square."""
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    m = min(w, h)
    return (w - m) // 2, (h - m) // 2, m, m


def _augmented(blobs: list[bytes], size: int, rng: np.random.Generator) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, b in enumerate(blobs):
        img = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)  # (3, H, W)
        x0, y0, cw, ch = crop_box(rng, img.shape[2], img.shape[1])
        crop = F.resized_crop(img, y0, x0, ch, cw, [size, size], antialias=True)
        out[i] = (crop.flip(-1) if rng.random() < 0.5 else crop).permute(1, 2, 0).numpy()
    return out


def encode_image(blob: bytes, split: str, cfg: ImageNetPreprocessCfg) -> tuple[bytes, np.ndarray | None]:
    """One source image -> its stored bytes (decoding fully: a truncated or corrupt file raises), and for the
    train split the per-channel histogram of its evaluation view (the mean/std of the manifest).

    - train: shorter side -> ``cfg.resize``, JPEG at ``cfg.quality`` (training's random-resized crops read it);
    - test: ``eval_view`` of the original decoded at full resolution (no draft, no reducing gap), as lossless
      PNG: the exact input of the reference evaluation.
    """
    from PIL import Image

    buf = io.BytesIO()
    if split == "test":
        with Image.open(io.BytesIO(blob)) as im:
            rgb = im.convert("RGB")  # as torchvision's pil_loader: Image.open(f).convert("RGB")
        # zlib level 6 (Pillow's default): ~3x slower to write than level 1, ~13 % smaller to read each epoch
        eval_view(rgb, cfg.resize, cfg.image_size).save(buf, format="PNG", compress_level=6)
        return buf.getvalue(), None
    with Image.open(io.BytesIO(blob)) as im:
        im.draft("RGB", (cfg.resize, cfg.resize))  # JPEG: decode at 1/2, 1/4, 1/8 scale when that is enough
        im.load()
        rgb = im.convert("RGB")
    w, h = rgb.size
    scale = cfg.resize / min(w, h)
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=3.0)
    rgb.save(buf, format="JPEG", quality=cfg.quality)
    stored = buf.getvalue()
    x = decode_images([stored], cfg.image_size, cfg.resize)[0]
    return stored, channel_histogram(x)


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """(C, 256) counts of each uint8 value per channel of HWC images (or one image): what the channel
    statistics are computed from, summed over shards (``manifest.stats_from_histogram``)."""
    return np.stack([np.bincount(images[..., c].ravel(), minlength=256) for c in range(images.shape[-1])])
