"""``nnunet-sacl check-weights``: will ``nnUNetv2_train ... -pretrained_weights FILE`` accept FILE for a dataset?
(``nnunet_sacl.nnunet.weights``)"""
from nnunet_sacl.cli import Command, refusing

EXAMPLE = ("A=$nnUNet_results/Dataset017_A/SACLPretrainer__nnUNetPlans__3d_fullres\n"
           "nnunet-sacl check-weights $A/fold_0/checkpoint_sacl_encoder.pth \\\n"
           "    -d 18 -c 3d_fullres -p nnUNetPlans_from17\n"
           "# exit code 0: the weights fit; 1: they do not (the output says why)")


def add_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="weights file (checkpoint_sacl_encoder.pth, any nnU-Net checkpoint, or "
                                                 "one nnssl wrote)")
    p.add_argument("-d", required=True, help="target dataset name or id (planned: its plans in nnUNet_preprocessed)")
    p.add_argument("-c", required=True, help="target configuration, e.g. 3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="target plans identifier (default nnUNetPlans)")


def run(args) -> int:
    from nnunet_sacl.nnunet.weights import check_weights
    with refusing(FileNotFoundError, ValueError, RuntimeError):
        report = check_weights(args.file, args.d, args.c, args.p)
    print(report)
    return 0 if report.fits else 1


COMMANDS = [Command("check-weights", "will -pretrained_weights FILE fit dataset B's network? every bad key, and why",
                    EXAMPLE, add_arguments, run)]
