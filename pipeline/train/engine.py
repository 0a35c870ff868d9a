"""The training loop as plain functions (in the manner of ConvNeXt's ``engine.py``).

Nothing here knows about Ray or MLflow: the Ray worker (``pipeline.train.worker``) and the benchmark's bare
loop call the same functions. Data-parallel sharding is by (rank, world_size); metrics are summed across
ranks with ``torch.distributed`` when it is initialised, so every rank returns the same global numbers.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.device import CPU, EAGER, FastPath, normalize

if TYPE_CHECKING:  # type hints only: the engine runs with torch alone (benchmarks/fast_path.py)
    from pipeline.config import TrainCfg


@dataclass(frozen=True)
class TensorData:
    """A whole split in memory: uint8 NCHW images and int64 labels (CIFAR-sized sets fit easily)."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    @classmethod
    def from_numpy(cls, images_hwc, labels) -> TensorData:
        return cls(torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> TensorData:
        return TensorData(self.images[idx], self.labels[idx])

    def to(self, device: torch.device) -> TensorData:
        return TensorData(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class StreamData:
    """This rank's shard of a split streamed by Ray Data (``ray.train.get_dataset_shard``), decoded -- and
    for training, augmented -- by Ray Data tasks (see ``pipeline.data.manifest.ray_dataset``)."""

    shard: Any  # ray.data.DataIterator yielding {"image": (B, H, W, 3) uint8, "label": (B,) int64}

    def batches(
        self, batch_size: int, device: torch.device, drop_last: bool, shuffle_buffer: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's batches; ``shuffle_buffer`` > 0: each drawn at random from that many rows in hand (Ray
        Data's local shuffle buffer: memory bounded by the buffer, not the data set)."""
        buffer = {"local_shuffle_buffer_size": shuffle_buffer} if shuffle_buffer else {}
        for b in self.shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last, **buffer):
            # NCHW-contiguous like the in-memory path: a channels_last input into an NCHW net hung oneDNN's 1x1
            # conv weight gradient on CPU (torch 2.14); FastPath.inputs converts both when channels_last is on
            # (one copy, into NCHW order; the batch Ray hands over is read-only)
            x = torch.from_numpy(b["image"].transpose(0, 3, 1, 2).copy()).to(device, non_blocking=True)
            yield x, torch.tensor(b["label"]).to(device, non_blocking=True)


Data = TensorData | StreamData


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding) and horizontal flip, as batched tensor ops."""
    b, c, h, w = x.shape
    if padding:
        xp = F.pad(x, (padding,) * 4)  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
        cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch of a unit (its order, crops and flips, the BN batches)."""
    return seed * 100_003 + epoch


def epoch_order(n: int, seed: int, epoch: int, shard: Shard) -> torch.Tensor:
    """This rank's sample indices for one epoch: a seeded permutation, split evenly (remainder dropped)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)
    per_rank = n // shard.world_size
    return perm[shard.rank :: shard.world_size][:per_rank]


def build_optimizer(model: nn.Module, cfg: TrainCfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )


def lr_factor(cfg: TrainCfg, epoch: int) -> float:
    """The lr of ``epoch`` (0-based) as a multiple of ``cfg.lr``: ``warmup_lr`` during the warm-up epochs, then
    ``step`` (times gamma at each milestone passed) or ``cosine`` (annealed to 0 at ``epochs``), counted from
    epoch 0 as He et al. do ("then go back to 0.1 and continue training")."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    if cfg.schedule == "step":
        return cfg.gamma ** sum(m <= epoch for m in cfg.milestones)
    return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainCfg) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch, following ``lr_factor``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg))


def _sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _train_batches(
    data: Data, cfg: TrainCfg, seed: int, epoch: int, shard: Shard, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's augmented training batches for one epoch: a seeded order with per-sample crop and flip for
    in-memory data; for streamed data the stream's own order (shards in a new order each epoch, rows drawn from
    a bounded shuffle buffer) and augmentation (equal-sized shards, last partial batch dropped, so every rank
    takes the same number of DDP steps)."""
    per_rank_batch = cfg.batch_size // shard.world_size
    if isinstance(data, StreamData):
        yield from data.batches(per_rank_batch, device, drop_last=True, shuffle_buffer=cfg.shuffle_buffer)
        return
    idx = epoch_order(len(data), seed, epoch, shard)
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) * 1_000 + shard.rank)
    for start in range(0, len(idx), per_rank_batch):
        b = idx[start : start + per_rank_batch]
        x = random_crop_flip(data.images[b].to(device, non_blocking=True), cfg.crop_padding, cfg.flip, gen)
        yield x, data.labels[b].to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    data: Data,
    optimizer: torch.optim.Optimizer,
    cfg: TrainCfg,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    epoch: int,
    shard: Shard = Shard(),
    device: torch.device = CPU,
    fast: FastPath = EAGER,
) -> dict[str, float]:
    """One pass over this rank's shard; returns global train loss, top-1 and images/s."""
    model.train()
    loss_sum, correct, seen = 0.0, 0.0, 0
    t0 = time.perf_counter()
    for x, y in _train_batches(data, cfg, seed, epoch, shard, device):
        with fast.autocast(device):
            logits = model(fast.inputs(normalize(x, mean, std)))  # (B, num_classes)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)  # summed on the device: no sync per step
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss_sum, correct = float(loss_sum), float(correct)
    seconds = time.perf_counter() - t0
    loss_sum, correct, seen_all = _sum_across_ranks([loss_sum, correct, seen], device)
    return {
        "train_loss": loss_sum / seen_all,
        "train_top1": 100.0 * correct / seen_all,
        "images_per_s": seen_all / seconds,
        "train_time_s": seconds,
    }


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Data,
    cfg: TrainCfg,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    epoch: int,
    device: torch.device = CPU,
    fast: FastPath = EAGER,
) -> None:
    """Recompute BatchNorm running statistics as plain averages over ``cfg.bn_recalibration`` augmented train
    batches with the current weights ("precise BN"). Not in the paper: in short runs the exponential running
    averages lag far behind fast-moving weights and evaluation suffers (measured on the embedded set: ResNet
    64.6 -> 74.7 % after two epochs)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not cfg.bn_recalibration or not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) + 7)

    def sampled() -> Iterator[Tensor]:  # random train batches with the training augmentation
        for _ in range(cfg.bn_recalibration):
            b = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
            yield random_crop_flip(data.images[b].to(device), cfg.crop_padding, cfg.flip, gen)

    if isinstance(data, StreamData):
        batches = (x for x, _ in data.batches(cfg.batch_size, device, drop_last=False))
    else:
        batches = sampled()
    for _, x in zip(range(cfg.bn_recalibration), batches, strict=False):
        with fast.autocast(device):
            model(fast.inputs(normalize(x, mean, std)))
    for bn, m in zip(bns, saved, strict=True):
        bn.momentum = m


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 500,
    shard: Shard = Shard(),
    device: torch.device = CPU,
    prefix: str = "val",
    fast: FastPath = EAGER,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over the whole split, each rank taking every world_size-th sample.

    Call it with the unwrapped module (not DDP): ranks may see different batch counts.
    """
    model.eval()
    if isinstance(data, StreamData):  # the stream is already this rank's part
        batches = data.batches(batch_size, device, drop_last=False)
    else:
        idx = torch.arange(shard.rank, len(data), shard.world_size)
        batches = (
            (data.images[b].to(device), data.labels[b].to(device))
            for b in (idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
        )
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    for x, y in batches:
        with fast.autocast(device):
            logits = model(fast.inputs(normalize(x, mean, std))).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (B, k)
        hit = topk == y[:, None]
        c1 += hit[:, 0].sum().item()
        c5 += hit.any(1).sum().item()
        n += len(y)
    loss_sum, c1, c5, n = _sum_across_ranks([loss_sum, c1, c5, n], device)
    n = max(n, 1)
    # a diverged net (NaN loss) is a result, not a crash: it finishes, and the report flags it
    return {f"{prefix}_loss": loss_sum / n, f"{prefix}_top1": 100.0 * c1 / n, f"{prefix}_top5": 100.0 * c5 / n}


@torch.no_grad()
def predict(
    model: nn.Module,
    data: TensorData,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 500,
    device: torch.device = CPU,
) -> torch.Tensor:
    """Logits for every sample, in order (single process)."""
    model.eval()
    return torch.cat(
        [
            model(normalize(data.images[s : s + batch_size].to(device), mean, std)).cpu()
            for s in range(0, len(data), batch_size)
        ]
    )
