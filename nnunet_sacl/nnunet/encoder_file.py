"""The encoder file (``checkpoint_sacl_encoder.pth``) and the record it carries, so that whoever receives only the
file can fine-tune from it (``nnunet-sacl prepare-finetune``) and see where it comes from (``check-weights``).

The file is nnU-Net's checkpoint format, loadable by ``-pretrained_weights``: ``network_weights`` (the whole network:
pretrained encoder, decoder as initialised), ``trainer_name``, ``init_args`` as nnU-Net's own checkpoints have it
(the plans, the configuration, the fold and the dataset's ``dataset.json`` with its channel names and labels) and
``sacl``: the pretraining settings, its outcome and the versions that wrote it, and ``nnssl_adaptation_plan``, what
nnU-Net's own fine-tuning path for pretrained checkpoints reads (``nnssl_format``). Everything but the tensors is a
plain value (dicts, lists, strings, numbers), so ``torch.load(weights_only=True)`` reads the whole file.
"""
import json
from importlib.metadata import PackageNotFoundError, version

ENCODER_FILE_FORMAT = 2     # 1: network_weights, trainer_name and a few settings (nnunet-sacl 0.1); 2: self-describing

# the settings of a phase-1 trainer that shape its encoder, recorded under sacl['pretraining'] (the learning rate and
# weight decay under the names SACLTrainer gives them), besides the contrastive settings (CONTRASTIVE_SETTINGS)
PRETRAINING_SETTINGS = {"pretrain_initial_lr": "initial_lr", "pretrain_weight_decay": "weight_decay",
                        "pretrain_augmentation": "pretrain_augmentation"}


def plain(value):
    """``value`` as JSON's plain types (tuples -> lists, numpy scalars -> numbers, tensors left out, e.g. a
    projection head in a checkpoint's record): loadable with weights_only."""
    def without_tensors(obj):
        if isinstance(obj, dict):
            return {k: without_tensors(v) for k, v in obj.items() if not _is_tensor_like(v)}
        if isinstance(obj, (list, tuple)):
            return [without_tensors(v) for v in obj if not _is_tensor_like(v)]
        return obj
    value = without_tensors(value)

    def default(obj):
        if hasattr(obj, "item"):
            return obj.item()
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        return str(obj)
    return json.loads(json.dumps(value, default=default))


def _is_tensor_like(value) -> bool:
    """Tensors, and dicts that hold only tensors and dicts of them (state dicts)."""
    import torch
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, dict) and bool(value) and all(_is_tensor_like(v) for v in value.values())


def package_versions() -> dict:
    versions = {}
    for package in ("nnunet_sacl", "nnunetv2", "torch", "dynamic_network_architectures"):
        try:
            versions[package] = version(package.replace("_", "-") if package == "nnunet_sacl" else package)
        except PackageNotFoundError:
            versions[package] = None
    if versions["nnunet_sacl"] is None:
        from nnunet_sacl import __version__
        versions["nnunet_sacl"] = __version__
    return versions


def encoder_file_contents(trainer) -> dict:
    """What a phase-1 trainer writes to its encoder file at the end of pretraining: the whole network as CPU
    tensors, and the record a recipient needs."""
    from nnunet_sacl.nnunet.network import unwrap
    weights = {k: v.detach().cpu() for k, v in unwrap(trainer.network).state_dict().items()}
    losses = trainer.logger.get_value('train_losses', step=None)
    config = trainer.configuration_manager
    from nnunet_sacl.nnunet.contrastive import CONTRASTIVE_SETTINGS
    from nnunet_sacl.nnunet.nnssl_format import ENTRY, adaptation_plan
    settings = {name: getattr(trainer, attribute) for name, attribute in PRETRAINING_SETTINGS.items()}
    settings.update({name: getattr(trainer, name) for name in CONTRASTIVE_SETTINGS})
    settings.update(epochs=trainer.current_epoch, iterations_per_epoch=trainer.num_iterations_per_epoch,
                    batch_size=trainer.batch_size, patch_size=config.patch_size)
    handed = getattr(trainer, "handed", None)
    return {
        'network_weights': weights,
        'trainer_name': handed.trainer_name if handed is not None else trainer.__class__.__name__,
        'init_args': plain({'plans': trainer.plans_manager.plans, 'configuration': trainer.configuration_name,
                            'fold': trainer.fold, 'dataset_json': trainer.dataset_json}),
        # what nnU-Net's own path for pretrained checkpoints (and nnssl) reads: nnssl_format
        ENTRY: adaptation_plan(trainer.plans_manager.plans, trainer.configuration_name, unwrap(trainer.network)),
        'sacl': plain({'format': ENCODER_FILE_FORMAT,
                       'plans_name': trainer.plans_manager.plans_name, 'configuration': trainer.configuration_name,
                       'dataset_name': trainer.plans_manager.dataset_name, 'pretrain_epochs': trainer.current_epoch,
                       'pool_stages': list(trainer.pool_stages), 'embedding': trainer.embedding,
                       'temperature': trainer.temperature, 'final_loss': float(losses[-1]) if losses else None,
                       'pretraining': settings, 'versions': package_versions()}),
    }


def recorded(checkpoint: dict) -> list:
    """Lines that say what a weights file records about itself (its trainer, dataset, channels, labels, plans,
    pretraining, versions); for a file that records nothing, one line that says so."""
    init_args = checkpoint.get("init_args") or {}
    meta = checkpoint.get("sacl") or {}
    plans, dataset_json = init_args.get("plans") or {}, init_args.get("dataset_json") or {}
    lines = []
    if checkpoint.get("trainer_name"):
        versions = meta.get("versions") or {}
        written = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        lines.append(f"trainer: {checkpoint['trainer_name']}" + (f" ({written})" if written else ""))
    if plans:
        lines.append(f"trained on: {plans.get('dataset_name', '?')}, plans {plans.get('plans_name', '?')}, "
                     f"configuration {init_args.get('configuration', meta.get('configuration', '?'))}, "
                     f"fold {init_args.get('fold', '?')}")
    if dataset_json.get("channel_names"):
        lines.append("channels: " + ", ".join(f"{k}: {v}" for k, v in dataset_json["channel_names"].items()))
    if dataset_json.get("labels"):
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in dataset_json["labels"].items()))
    settings = meta.get("pretraining")
    if settings:
        lines.append("pretraining: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
        if meta.get("final_loss") is not None:
            lines[-1] += f"; final contrastive loss {meta['final_loss']:.4f}"
    elif meta.get("pretrain_epochs") is not None:
        lines.append(f"pretraining: {meta['pretrain_epochs']} epochs, pool stages {meta.get('pool_stages')}, "
                     f"{meta.get('embedding')}, temperature {meta.get('temperature')}")
    if checkpoint.get("nnssl_adaptation_plan") is not None:
        from nnunet_sacl.nnunet.nnssl_format import described, read_adaptation_plan
        try:
            lines.append(described(read_adaptation_plan("the file", checkpoint)))
        except ValueError as e:          # said by check-weights and prepare-finetune when it matters
            lines.append(f"nnssl adaptation plan: {e}")
    prepared = meta.get("prepared_for")
    if prepared:
        adapted = prepared.get("input_channels_adapted")
        lines.append(f"prepared by prepare-finetune for {prepared.get('dataset')}, plans {prepared.get('plans_name')}, "
                     f"{prepared.get('configuration')}, from {prepared.get('from_file')}"
                     + (f" (stem adapted to {prepared.get('input_channels')} input channels)" if adapted else ""))
    if not plans and checkpoint.get("nnssl_adaptation_plan") is None:
        lines.append("no plans in the file (init_args): an encoder file of nnunet-sacl 0.1 or weights saved "
                     "outside nnU-Net")
    return lines
