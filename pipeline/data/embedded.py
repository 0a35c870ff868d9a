"""The embedded default data set: cluttered glyphs, made locally and deterministically from a seed.

In the spirit of the cluttered-digits task of Mnih et al. (2014), which the paper cites: each 32x32 colour
image holds one small glyph (a 5x7 bitmap digit drawn at 2x, 10x14 pixels, mirrored half the time) at a
random position, in a random colour, over a noisy random-colour background strewn with fragments of other
glyphs. The class is the digit; everything else is clutter, so a network has to find the object --
something for spatial attention to do -- and chance is 10 %.

The images are written as a CIFAR-10 *binary* archive (``cifar-10-batches-bin/data_batch_{1..5}.bin``,
``test_batch.bin``, ``batches.meta.txt``; records of 1 label byte + 3072 bytes R, G, B planes), so the
embedded set and real CIFAR go through the same reader and preprocess path. Archives are byte-identical
for the same settings (fixed tar and gzip timestamps), so their checksum is a fingerprint of the data.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import EmbeddedFetchCfg

from .cifar import write_cifar10_binary

# 5x7 bitmap digits, one string per row
_FONT = {
    0: ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    1: "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    2: ".###.|#...#|....#|...#.|..#..|.#...|#####",
    3: "#####|...#.|..#..|...#.|....#|#...#|.###.",
    4: "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    5: "#####|#....|####.|....#|....#|#...#|.###.",
    6: "..##.|.#...|#....|####.|#...#|#...#|.###.",
    7: "#####|....#|...#.|..#..|.#...|.#...|.#...",
    8: ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    9: ".###.|#...#|#...#|.####|....#|...#.|.##..",
}
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 32
SCALE = 2


def _glyphs() -> np.ndarray:
    g = np.array([[[c == "#" for c in row] for row in _FONT[d].split("|")] for d in range(10)], dtype=bool)
    return g.repeat(SCALE, axis=1).repeat(SCALE, axis=2)  # (10, 14, 10)


def _paint(img: np.ndarray, mask: np.ndarray, y: int, x: int, colour: np.ndarray) -> None:
    h, w = mask.shape
    region = img[y : y + h, x : x + w]
    region[mask] = colour


def render(labels: np.ndarray, rng: np.random.Generator, clutter: int, noise: float) -> np.ndarray:
    """Images (N, 32, 32, 3) uint8 for the given digit labels."""
    glyphs = _glyphs()
    gh, gw = glyphs.shape[1:]
    n = len(labels)
    base = rng.uniform(0.0, 0.35, (n, 1, 1, 3))  # darkish backgrounds, so the bright object stands out
    imgs = base + noise * rng.standard_normal((n, SIZE, SIZE, 3))
    frag = 6  # clutter fragments: 6x6 crops of random glyphs
    for i, label in enumerate(labels):
        img = imgs[i]
        for _ in range(clutter):
            g = glyphs[rng.integers(10)]
            fy, fx = rng.integers(0, gh - frag + 1), rng.integers(0, gw - frag + 1)
            _paint(
                img,
                g[fy : fy + frag, fx : fx + frag],
                rng.integers(0, SIZE - frag + 1),
                rng.integers(0, SIZE - frag + 1),
                rng.uniform(0.15, 0.65, 3),
            )
        # the object goes on top so clutter never hides it; mirrored half the time, so that the standard
        # horizontal-flip augmentation (paper Sec. 4.1) preserves the label here as it does on CIFAR
        glyph = glyphs[label][:, ::-1] if rng.random() < 0.5 else glyphs[label]
        _paint(img, glyph, rng.integers(0, SIZE - gh + 1), rng.integers(0, SIZE - gw + 1), rng.uniform(0.7, 1.0, 3))
    return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)


def make_embedded(cfg: EmbeddedFetchCfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': (...)} with balanced classes, deterministic in ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        out[split] = (render(labels, rng, cfg.clutter, cfg.noise), labels)
    return out


def write_embedded_archive(cfg: EmbeddedFetchCfg, path: str) -> None:
    """Generate the set and write it as a CIFAR-10 binary archive at ``path`` (atomically)."""
    data = make_embedded(cfg)
    write_cifar10_binary(path, data["train"], data["test"], CLASSES)
