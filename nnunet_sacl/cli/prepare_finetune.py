"""``nnunet-sacl prepare-finetune``: a received weights file -> a target dataset ready for ``nnUNetv2_train ...
-pretrained_weights`` (``nnunet_sacl.nnunet.prepare_finetune``)."""
from nnunet_sacl.cli import Command, refusing

EXAMPLE = ("nnunet-sacl prepare-finetune checkpoint_sacl_encoder.pth -d 18 -c 3d_fullres\n"
           "# then run the lines it prints:\n"
           "#   nnUNetv2_train 18 3d_fullres 0 -tr nnUNetTrainer -p nnUNetPlans_from17 \\\n"
           "#       -pretrained_weights WEIGHTS_IT_WROTE\n"
           "#   nnUNetv2_predict ... -p nnUNetPlans_from17")


def add_arguments(p) -> None:
    p.add_argument("file", metavar="WEIGHTS", help="weights file: checkpoint_sacl_encoder.pth, an nnU-Net "
                                                    "checkpoint that carries its plans (checkpoint_final.pth), or "
                                                    "a checkpoint nnssl wrote (ResEnc or Plain U-Net)")
    p.add_argument("-d", required=True, help="target dataset name or id, in nnUNet_raw")
    p.add_argument("-c", required=True, help="configuration of the file's plans to fine-tune, e.g. 3d_fullres")
    p.add_argument("-p", default=None, help="name of the plans written for the target (default: the file's plans "
                                            "name + _from + its dataset id, e.g. nnUNetPlans_from17)")
    p.add_argument("--fold", default="0", help="fold in the printed nnUNetv2_train line (default 0)")
    p.add_argument("-np", type=int, default=None,
                   help="processes for nnU-Net's fingerprint extraction and preprocessing (nnU-Net's default if "
                        "not given)")


def run(args) -> int:
    from nnunet_sacl.nnunet.prepare_finetune import prepare_finetune
    with refusing(FileNotFoundError, ValueError, RuntimeError):
        preparation = prepare_finetune(args.file, args.d, args.c, args.p, args.fold, args.np)
    print(preparation)
    return 0


COMMANDS = [Command("prepare-finetune", "a weights file -> a dataset ready to fine-tune from it (plans, "
                                        "preprocessing, input channels); prints the nnUNetv2_train line",
                    EXAMPLE, add_arguments, run)]
