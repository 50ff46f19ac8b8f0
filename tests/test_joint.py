"""SACLTrainer_joint on real nnU-Net plans and data: one step's loss against loop references, where its gradients go,
weight 0 against stock nnU-Net, checkpoints with the head, -pretrained_weights, and a killed run resumed with --c."""
import copy
import gc
from os.path import isfile, join

import pytest
import torch

from nnunetv2.run.run_training import maybe_load_checkpoint

from nnunet_sacl.nnunet.joint import SACLTrainer_joint
from nnunet_sacl.nnunet.network import build_nnunet_network, encoder_of, unwrap
from tests.helpers import nnunet_bin, run
from tests.helpers import D, fold_folder, has_epoch_line, kill_when, train_env, training_log
from tests.helpers import reference_supcon
from tests.helpers import reference_mask_pool
from tests.helpers import first_batch, make_trainer

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

JOINT = "SACLTrainer_joint_smoke"


def joint_trainer(weight=None, fold=0):
    trainer = make_trainer(JOINT, fold=fold)
    if weight is not None:
        trainer.joint_contrastive_weight = weight
    trainer.initialize()
    return trainer


def count_encoder_calls(trainer) -> list:
    calls = []
    encoder_of(trainer.network).register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_step_loss_is_segmentation_loss_plus_weight_times_reference_supcon(in_process_env):
    trainer = joint_trainer(weight=0.7)
    batch = first_batch(trainer)
    net = build_nnunet_network(trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json, True)
    net.load_state_dict(unwrap(trainer.network).state_dict())
    head = copy.deepcopy(trainer.head)
    calls = count_encoder_calls(trainer)
    out = trainer.train_step(batch)
    assert len(calls) == 1, "the encoder must run once per step"

    # independent reference: the network's forward, nnU-Net's loss, loop mask pooling, loop SupCon
    with torch.no_grad():
        segmentation = float(trainer.loss(net(batch["data"]), batch["target"]))
        seg = batch["target"][0]
        rows, labels, _ = reference_mask_pool(net.encoder(batch["data"])[-1], seg, 4)
        supcon = reference_supcon(head(rows.float()), labels.tolist(), trainer.temperature)
    assert supcon > 0
    assert float(out["segmentation"]) == pytest.approx(segmentation, rel=1e-5)
    assert float(out["contrastive"]) == pytest.approx(supcon, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(segmentation + 0.7 * supcon, rel=1e-5)


def test_encoder_features_are_kept_only_in_training_steps(in_process_env):
    """The forward hook keeps nothing outside a training step (validation, inference, a forward in train mode),
    and a training step clears what it used."""
    trainer = joint_trainer()
    batch = first_batch(trainer)
    trainer.train_step(batch)
    assert trainer._encoder_features is None
    trainer.network.eval()
    with torch.no_grad():
        trainer.network(batch["data"])                     # as nnU-Net's validation step and predictor do
    assert trainer._encoder_features is None
    trainer.network.train()
    trainer.network(batch["data"])
    assert trainer._encoder_features is None
    with trainer._encoder_features_kept():
        trainer.network(batch["data"])
    assert trainer._encoder_features is not None


def test_gradients_reach_encoder_decoder_and_head(in_process_env):
    trainer = joint_trainer()
    batch = first_batch(trainer)
    net = unwrap(trainer.network)
    head_before = [p.detach().clone() for p in trainer.head.parameters()]
    trainer.train_step(batch)

    def nonzero(params):
        return [p.grad is not None and p.grad.abs().sum() > 0 for p in params]

    encoder_weights = [p for k, p in net.encoder.named_parameters() if k.endswith("weight") and p.ndim > 1]
    # the decoder's own layers (it also holds a reference to the encoder); nnU-Net's deep supervision gives the
    # lowest-resolution output weight 0, so its segmentation layer gets no gradient from any trainer
    decoder_own = {k: p for k, p in net.decoder.named_parameters() if k.startswith(("stages.", "transpconvs."))}
    decoder_weights = [p for k, p in decoder_own.items() if k.endswith("weight") and p.ndim > 1]
    assert encoder_weights and all(nonzero(encoder_weights))
    assert decoder_weights and all(nonzero(decoder_weights))
    assert all(nonzero(trainer.head.parameters()))
    # the head is in the optimizer (its own parameter group, on nnU-Net's learning rate) and moved
    assert len(trainer.optimizer.param_groups) == 2
    assert trainer.optimizer.param_groups[1]["lr"] == trainer.optimizer.param_groups[0]["lr"]
    assert all(not torch.equal(p, q) for p, q in zip(trainer.head.parameters(), head_before))

    # the contrastive term alone also reaches the encoder (not only through the segmentation loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    with trainer._encoder_features_kept():
        trainer.network(batch["data"])
    z, organs, _ = trainer.embed_features(trainer._encoder_features, batch["target"][0])
    trainer.contrastive_loss(z, organs).backward()
    assert all(nonzero(encoder_weights))
    assert all(p.grad is None for p in decoder_own.values())


def test_weight_zero_is_exactly_nnunets_step(in_process_env):
    stock = make_trainer("nnUNetTrainer_smoke")
    stock.initialize()
    joint = joint_trainer(weight=0.0)
    unwrap(joint.network).load_state_dict(unwrap(stock.network).state_dict())
    batches = [first_batch(stock) for _ in range(2)]
    head_before = [p.detach().clone() for p in joint.head.parameters()]
    for batch in batches:   # two steps: momentum included
        loss_stock, loss_joint = stock.train_step(batch)["loss"], joint.train_step(batch)["loss"]
        assert loss_stock == loss_joint
    for (k, a), (k2, b) in zip(unwrap(stock.network).state_dict().items(), unwrap(joint.network).state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert all(torch.equal(p, q) for p, q in zip(joint.head.parameters(), head_before))


@pytest.mark.slow
def test_compiled_network_gives_the_eager_step(in_process_env, monkeypatch):
    """nnU-Net compiles the network on GPUs (inside initialize, before the joint trainer hooks the encoder). The
    hook must still see the encoder's output of the compiled forward: same step as eager, head trained. Dynamo's
    real tracing with the aot_eager backend (inductor's CPU code generation would only add minutes)."""
    import functools
    eager = joint_trainer(weight=0.5)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    # on the package's class: nnU-Net's lookup by name imports the tests' trainer module anew for each trainer
    monkeypatch.setattr(SACLTrainer_joint, "_do_i_compile", lambda self: True)
    compiled = joint_trainer(weight=0.5)
    assert isinstance(compiled.network, torch._dynamo.eval_frame.OptimizedModule)
    unwrap(compiled.network).load_state_dict(unwrap(eager.network).state_dict())
    compiled.head.load_state_dict(eager.head.state_dict())
    head_before = [p.detach().clone() for p in compiled.head.parameters()]
    batch = first_batch(eager)
    out_eager, out_compiled = eager.train_step(batch), compiled.train_step(batch)
    assert float(out_compiled["contrastive"]) > 0
    for key in ("loss", "segmentation", "contrastive"):
        assert float(out_compiled[key]) == pytest.approx(float(out_eager[key]), rel=1e-4), key
    assert not all(torch.equal(p, q) for p, q in zip(compiled.head.parameters(), head_before))


def test_intensity_weighted_negatives_apply_to_the_joint_term(in_process_env):
    trainer = make_trainer(JOINT)
    trainer.intensity_weighted_negatives = True        # DCC, as SACLTrainer_DCC sets it for pretraining
    trainer.initialize()
    assert type(trainer.contrastive_loss).__name__ == "IntensityWeightedSupConLoss"
    out = trainer.train_step(first_batch(trainer))
    assert float(out["contrastive"]) > 0 and float(out["loss"]) > float(out["segmentation"])


def test_checkpoint_keeps_the_head_and_its_optimizer_state(in_process_env, tmp_path):
    trainer = joint_trainer()
    trainer.train_step(first_batch(trainer))
    file = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(file)
    saved = torch.load(file, weights_only=False, map_location="cpu")
    # network_weights are nnU-Net's network alone (nnUNetv2_predict builds exactly that)
    stock = build_nnunet_network(trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json, True)
    assert saved["network_weights"].keys() == stock.state_dict().keys()
    resumed = make_trainer(JOINT)
    resumed.load_checkpoint(file)
    for p, q in zip(resumed.head.parameters(), trainer.head.parameters()):
        assert torch.equal(p, q)
    assert len(resumed.optimizer.param_groups) == 2
    head_ids = {id(p) for p in resumed.head.parameters()}
    assert {id(p) for p in resumed.optimizer.param_groups[1]["params"]} == head_ids
    assert resumed.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def test_pretrained_weights_load_into_the_joint_network(in_process_env, tmp_path):
    stock = make_trainer("nnUNetTrainer_smoke", fold=1)
    stock.initialize()
    with torch.no_grad():
        for p in unwrap(stock.network).parameters():
            p.add_(0.01)
    file = str(tmp_path / "weights.pth")
    torch.save({"network_weights": unwrap(stock.network).state_dict()}, file)
    joint = make_trainer(JOINT)
    maybe_load_checkpoint(joint, False, False, file)    # what nnUNetv2_train -pretrained_weights does
    for (k, a), (_, b) in zip(unwrap(stock.network).state_dict().items(), unwrap(joint.network).state_dict().items()):
        assert ".seg_layers." in k or torch.equal(a, b), k
    assert joint.head is not None and len(joint.optimizer.param_groups) == 2
    assert torch.isfinite(torch.as_tensor(joint.train_step(first_batch(joint))["loss"]))


@pytest.mark.slow
def test_joint_run_killed_mid_way_resumes_with_c_and_finishes(nnunet_env, preprocessed):
    env = train_env(nnunet_env)
    # fold 3: the in-process tests above write their logs (and a "Resumed from" line) into fold 0's folder
    folder = fold_folder(nnunet_env, JOINT, 3)
    cmd = [nnunet_bin("nnUNetv2_train"), D, "3d_fullres", "3", "-tr", JOINT, "-device", "cpu"]
    kill_when(cmd, env, lambda: has_epoch_line(training_log(folder), 1), timeout=1800)
    log = training_log(folder)
    assert "Training done." not in log, "the run finished before it could be killed"
    assert "SACL joint epoch 0: segmentation loss" in log
    saved = torch.load(join(folder, "checkpoint_latest.pth"), weights_only=False, map_location="cpu")
    assert saved["current_epoch"] == 1 and saved["sacl"]["head"] is not None

    run(cmd + ["--c"], env)
    log = training_log(folder)
    after_resume = log[log.index("Resumed from"):]
    assert after_resume.startswith(f"Resumed from {join(folder, 'checkpoint_latest.pth')} at epoch 1")
    assert not has_epoch_line(after_resume, 0) and has_epoch_line(after_resume, 1)
    assert "SACL joint epoch 1: segmentation loss" in after_resume and "Training done." in after_resume
    assert "SACL pretraining" not in log
    assert isfile(join(folder, "checkpoint_final.pth"))


# ---------------------------------------------------------------- DDP: 2 gloo processes on CPU

class _Encoder(torch.nn.Module):
    output_channels = [8, 16]

    def __init__(self):
        super().__init__()
        self.stages = torch.nn.ModuleList([torch.nn.Conv3d(1, 8, 3, padding=1),
                                           torch.nn.Conv3d(8, 16, 3, stride=2, padding=1)])

    def forward(self, x):
        skips = []
        for stage in self.stages:
            x = torch.nn.functional.leaky_relu(stage(x))
            skips.append(x)
        return skips


class _Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose3d(16, 8, 2, stride=2)
        self.out = torch.nn.Conv3d(16, 5, 1)

    def forward(self, skips):
        return self.out(torch.cat([self.up(skips[1]), skips[0]], 1))


class _UNet(torch.nn.Module):
    """The shape of dynamic_network_architectures' U-Nets: .encoder returns the skips, .decoder takes them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.decoder = _Encoder(), _Decoder()

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _ddp_batch():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(4, 1, 8, 8, 8, generator=g)
    seg = torch.randint(0, 5, (4, 1, 8, 8, 8), generator=g)
    seg[1][seg[1] == 3] = 0      # ranks hold different numbers of organs
    return data, seg


def _bare_joint_trainer(network, weight=0.5):
    """A SACLTrainer_joint without nnU-Net's set-up: just what train_step uses, around a small U-Net."""
    from types import SimpleNamespace

    from nnunet_sacl.method.heads import ProjectionHead
    from nnunet_sacl.method.losses import SupConLoss
    from nnunet_sacl.nnunet.joint import SACLTrainer_joint
    from nnunet_sacl.method.nonfinite import NonFiniteLossGuard
    t = SACLTrainer_joint.__new__(SACLTrainer_joint)
    torch.manual_seed(2)
    t.device, t.network, t.head, t.grad_scaler = torch.device("cpu"), network, ProjectionHead(16, 32, 8), None
    t.loss = lambda out, target: torch.nn.functional.cross_entropy(out, target[:, 0])
    t.label_manager = SimpleNamespace(num_segmentation_heads=5, ignore_label=None)
    t.pool_stages, t.min_organ_voxels, t.case_phase, t.current_epoch = (-1,), 1, None, 0
    t.contrastive_loss, t.nonfinite, t.joint_contrastive_weight = SupConLoss(0.1), NonFiniteLossGuard(5), weight
    t._encoder_features = None
    encoder_of(network).register_forward_hook(t._keep_encoder_features)
    t.optimizer = torch.optim.SGD(list(unwrap(network).parameters()) + list(t.head.parameters()), lr=0.1)
    return t


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    trainer = _bare_joint_trainer(torch.nn.parallel.DistributedDataParallel(_UNet()))
    data, seg = _ddp_batch()
    part = slice(rank * 2, rank * 2 + 2)
    out = trainer.train_step({"data": data[part], "target": seg[part]})
    if rank == 0:
        torch.save({"contrastive": float(out["contrastive"]), "network": unwrap(trainer.network).state_dict(),
                    "head": trainer.head.state_dict()}, out_file)
    dist.barrier()
    # DDP's reducer holds the process group: release it before the group is destroyed, not in the interpreter's
    # teardown (where gloo's threads can end the process with "terminate called without an active exception")
    del trainer
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_step_equals_one_process_on_the_whole_batch(tmp_path):
    """Under DDP: DDP averages the network's gradients (the contrastive term's reach the encoder through the DDP
    forward), the trainer averages the head's, and SupCon sees both ranks' organs; one step must equal a single
    process on the concatenated batch with the ranks' mean segmentation loss."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pth")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "out.pth")

    trainer = _bare_joint_trainer(_UNet())
    data, seg = _ddp_batch()
    seg_loss = sum(trainer.loss(trainer.network(data[p]), seg[p]) for p in (slice(0, 2), slice(2, 4))) / 2
    features = encoder_of(trainer.network)(data)
    z, organs, _ = trainer.embed_features(features, seg)
    contrastive = trainer.contrastive_loss(z, organs)
    trainer.optimizer.zero_grad()
    (seg_loss + 0.5 * contrastive).backward()
    params = list(trainer.network.parameters()) + list(trainer.head.parameters())
    torch.nn.utils.clip_grad_norm_(params, 12)
    trainer.optimizer.step()

    assert ddp["contrastive"] == pytest.approx(contrastive.item(), rel=1e-5)
    for k, v in trainer.network.state_dict().items():
        torch.testing.assert_close(ddp["network"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    for k, v in trainer.head.state_dict().items():
        torch.testing.assert_close(ddp["head"][k], v, rtol=1e-4, atol=1e-6, msg=k)
