"""All-gather with gradients, so that the contrastive loss sees every rank's embeddings as negatives/positives, and
the few other collectives SACL needs (gradient and statistics averages, a broadcast)."""
from typing import Tuple

import torch
from torch import distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """Forward: concatenate every rank's (padded) rows. Backward: sum the gradient over ranks, keep own slice.

    Every rank computes the same global loss L, so the gradient reaching rank r's rows is sum_r' dL_r'/dz_r =
    W * dL/dz_r; DDP's (and our) gradient averaging over W ranks then yields exactly dL/dtheta. Uses only
    all_gather and all_reduce, which every backend (gloo, nccl) supports.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), rows.shape[0]
        out = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(out, rows.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, *extras: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Embeddings (with gradients), labels and any further per-row tensors (without gradients, e.g. organ
    intensities) of all ranks, in rank order. Ranks may hold different row counts."""
    world = dist.get_world_size()
    n = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    step = max(sizes)
    pad = step - embeddings.shape[0]
    all_rows = _GatherRows.apply(torch.cat([embeddings, embeddings.new_zeros(pad, *embeddings.shape[1:])]))
    keep = torch.cat([torch.arange(r * step, r * step + s, device=embeddings.device) for r, s in enumerate(sizes)])

    def gather_without_grad(rows: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([rows, rows.new_zeros(pad, *rows.shape[1:])]).contiguous()
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded)
        return torch.cat(out)[keep]

    return (all_rows[keep], gather_without_grad(labels), *(gather_without_grad(e.detach()) for e in extras))


def average_gradients(parameters) -> None:
    """Average .grad over ranks in one flat all-reduce (for modules that are not wrapped in DDP)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s parameters and buffers (for modules created per rank outside DDP)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src)


def mean_over_ranks(values) -> list:
    """The mean over ranks of each of this rank's numbers, in one all-reduce (float64; on CUDA under nccl, which
    reduces CUDA tensors only); the numbers themselves outside torch.distributed. NaN on any rank stays NaN."""
    stats = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if not is_distributed():
        return stats.tolist()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    stats = stats.to(device)
    dist.all_reduce(stats)
    return (stats / dist.get_world_size()).cpu().tolist()
