"""Why an attention network trains or collapses: what each softmax attention module's map and gradients look
like, measured on a fixed probe batch.

``diagnose(model, x, y)`` runs one forward and one backward pass in eval mode (BatchNorm uses its running
statistics and updates nothing) and takes the gradients with ``torch.autograd.grad``, so nothing accumulates
into the parameters' ``.grad`` and no data-parallel hook fires: training goes on exactly as without it. Per
``SoftmaxAttention`` module (keyed by its name in the net, ``diag/<name>/<stat>``):

- ``entropy``: the map's entropy over its H*W positions relative to a uniform map's, log(H*W), mean over
  images and maps: 1 = uniform (every position weighted alike), 0 = one-hot (all weight on one position);
- ``scale``: RMS of the module's output over the RMS of its input: 1 = the features pass unchanged; the
  literal scaling (``none``) of a uniform map at 8x8 gives 1/64, a peaked map under ``hw`` far above 1 at its
  peak and near 0 elsewhere;
- ``map_grad``: the L2 norm of the loss gradient at the map conv's weight: whether the map can still learn;
- ``in_grad``: the RMS of the gradient reaching the module's input: what flows back to the layers before it;

and for the whole net ``diag/stem_grad``, the L2 norm of the gradient at its first conv (the layer farthest
from the loss): a collapse that starves the early layers shows here first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import SoftmaxAttention

PREFIX = "diag/"


def entropy_ratio(maps: Tensor) -> Tensor:
    """(B, M, H, W) maps, each summing to 1 over its H*W positions -> (B, M) entropy / log(H*W) in [0, 1]."""
    p = maps.flatten(2)
    n = p.shape[-1]
    if n == 1:
        return torch.ones(p.shape[:2], dtype=p.dtype, device=p.device)  # one position: trivially uniform
    return -torch.special.xlogy(p, p).sum(-1) / math.log(n)


def _rms(t: Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def diagnose(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """The statistics above for the probe batch ``x`` (normalised images) with labels ``y``."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, SoftmaxAttention)}
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    seen: dict[str, dict[str, Tensor]] = {n: {} for n in modules}
    hooks = []
    for name, m in modules.items():
        hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: seen[n].update(inp=i[0], out=o)))
        hooks.append(m.softmax.register_forward_hook(lambda mod, i, o, n=name: seen[n].update(map=o)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x).float(), y)
            wrt = [*(modules[n].conv.weight for n in modules), *(seen[n]["inp"] for n in modules)]
            wrt += [stem.weight] if stem is not None else []
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    k = len(modules)
    out: dict[str, float] = {}
    for i, name in enumerate(modules):
        s, map_g, in_g = seen[name], grads[i], grads[k + i]
        out[f"{PREFIX}{name}/entropy"] = float(entropy_ratio(s["map"].detach().float()).mean())
        out[f"{PREFIX}{name}/scale"] = _rms(s["out"]) / max(_rms(s["inp"]), 1e-30)
        out[f"{PREFIX}{name}/map_grad"] = float(map_g.norm()) if map_g is not None else 0.0
        out[f"{PREFIX}{name}/in_grad"] = _rms(in_g) if in_g is not None else 0.0
    if stem is not None:
        out[f"{PREFIX}stem_grad"] = float(grads[-1].norm()) if grads[-1] is not None else 0.0
    return out
