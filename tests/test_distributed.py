"""Under DDP (2 CPU processes, gloo), SupConLoss and its intensity-weighted form see every rank's organs: loss and
encoder gradients equal a single-process run on the concatenated batch; statistics averaged over ranks are their
means."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_sacl.method.distributed import average_gradients, mean_over_ranks
from nnunet_sacl.method.heads import ProjectionHead
from nnunet_sacl.method.losses import IntensityWeightedSupConLoss, SupConLoss
from nnunet_sacl.method.pooling import mask_pool, organ_mean_intensity


def make_model():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(),
                                  torch.nn.Conv3d(8, 16, 3, stride=2, padding=1))
    return encoder, ProjectionHead(16, 32, 8)


def make_batch():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(4, 1, 8, 8, 8, generator=g)
    seg = torch.randint(0, 5, (4, 1, 8, 8, 8), generator=g)
    seg[1][seg[1] == 3] = 0      # ranks hold different numbers of organs
    seg[2][seg[2] >= 2] = 0
    return data, seg


def loss_and_grads(encoder, head, data, seg, weighted):
    emb, labels, samples = mask_pool(encoder(data), seg, 5)
    if weighted:  # random data: organ means lie near 0, so a range of 0.5 gives weights well inside (0, 1)
        intensities = organ_mean_intensity(data, seg, 5)[samples, labels]
        loss = IntensityWeightedSupConLoss([0.5], 0.1)(head(emb), labels, intensities)
    else:
        loss = SupConLoss(0.1)(head(emb), labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in list(encoder.parameters()) + list(head.parameters())]


def _worker(rank, world, init_file, out_file, weighted):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    encoder, head = make_model()
    data, seg = make_batch()
    part = slice(rank * 2, rank * 2 + 2)
    loss, _ = loss_and_grads(encoder, head, data[part], seg[part], weighted)
    params = list(encoder.parameters()) + list(head.parameters())
    average_gradients(params)  # what DDP (or the trainer's phase 1) does with the per-rank gradients
    if rank == 0:
        torch.save({"loss": loss, "grads": [p.grad for p in params]}, out_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("weighted", [False, True], ids=["supcon", "intensity-weighted"])
def test_ddp_gather_equals_single_process_on_concatenated_batch(tmp_path, weighted):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pth"), weighted), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "out.pth")
    encoder, head = make_model()
    loss, grads = loss_and_grads(encoder, head, *make_batch(), weighted)
    torch.testing.assert_close(ddp["loss"], loss, rtol=0, atol=1e-5)
    for g_ddp, g in zip(ddp["grads"], grads):
        torch.testing.assert_close(g_ddp, g, rtol=1e-4, atol=1e-5)



def _mean_worker(rank, world, init_file, out_file, statistics):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if statistics:   # the contrastive trainers' epoch statistics, the joint trainer's loss terms riding along
        from nnunet_sacl.nnunet.contrastive import ContrastiveMixin
        outputs = [{"organs": 4 + rank, "without_positive": 2 * rank}, {"organs": 6 + rank, "without_positive": 0}]
        result = ContrastiveMixin.epoch_statistics(outputs, segmentation=1.0 + rank,
                                                   contrastive=float("nan") if rank else 0.5)
    else:
        result = mean_over_ranks([1.0 + rank, 10 * rank, float("nan") if rank else 0.5])
    if rank == 0:
        torch.save(result, out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_mean_over_ranks_in_one_all_reduce(tmp_path):
    """Each number's mean over 2 gloo ranks (NaN on one rank stays NaN); outside torch.distributed the numbers."""
    mp.spawn(_mean_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pth"), False), nprocs=2, join=True)
    one, ten, nan = torch.load(tmp_path / "out.pth")
    assert (one, ten) == (1.5, 5.0) and nan != nan
    assert mean_over_ranks([2, 0.25]) == [2.0, 0.25]


@pytest.mark.slow   # its 2 processes import nnU-Net (about 6 s)
def test_epoch_statistics_and_further_values_are_averaged_over_ranks(tmp_path):
    """The joint trainer's loss terms travel with the contrastive statistics: every value the mean over ranks."""
    mp.spawn(_mean_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pth"), True), nprocs=2, join=True)
    stats = torch.load(tmp_path / "out.pth")
    assert stats["organs_per_batch"] == pytest.approx((5 + 6) / 2) and stats["batches_without_positive"] == 1
    assert stats["segmentation"] == pytest.approx(1.5) and stats["contrastive"] != stats["contrastive"]
