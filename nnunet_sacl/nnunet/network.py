"""Reaching the plain network inside nnU-Net's wrappers (DDP, torch.compile)."""
from torch import nn
from torch._dynamo import OptimizedModule


def unwrap(network: nn.Module) -> nn.Module:
    """The network as ``build_network_architecture`` built it: without ``.module`` (DDP) or ``._orig_mod`` (compile)."""
    if hasattr(network, "module") and isinstance(network.module, nn.Module):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def encoder_of(network: nn.Module) -> nn.Module:
    """The encoder of a dynamic_network_architectures U-Net (PlainConvUNet, ResidualEncoderUNet, ...).

    Its forward returns one feature map per stage (the last is the bottleneck).
    """
    net = unwrap(network)
    encoder = getattr(net, "encoder", None)
    if encoder is None or not hasattr(encoder, "output_channels"):
        raise TypeError(f"{type(net).__name__} has no dynamic_network_architectures-style encoder "
                        f"(.encoder with .output_channels); SACL needs one to pool organ features")
    return encoder


def build_nnunet_network(plans_manager, configuration_manager, dataset_json: dict, deep_supervision: bool) -> nn.Module:
    """The network ``nnUNetTrainer`` builds for a plan and dataset, input channels and output heads derived as it
    derives them (``nnUNetv2_train`` and ``nnUNetv2_predict`` build the same)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, deep_supervision)
