"""``nnunet-sacl pseudo-label``: unlabelled images + a trained model -> a raw dataset labelled by the model's
predictions (``nnunet_sacl.dataset_conversion.pseudo_labels``)."""
from nnunet_sacl.cli import Command, refusing

EXAMPLE = ("nnunet-sacl pseudo-label -i $nnUNet_raw/Dataset022_FLARE22/imagesUnlabelled \\\n"
           "      -d 22 -c 3d_fullres -tr nnUNetTrainer -f 0 1 2 3 4 --to 122\n"
           "# -> $nnUNet_raw/Dataset122_PseudoLabelled (resumable: run it again to finish)")


def add_arguments(p) -> None:
    p.add_argument("-i", required=True, metavar="FOLDER", help="folder of unlabelled CASE_0000.nii.gz images")
    p.add_argument("-d", required=True, metavar="DATASET", help="the model's dataset (as nnUNetv2_predict -d)")
    p.add_argument("-c", required=True, metavar="CONFIGURATION", help="the model's configuration")
    p.add_argument("-tr", default="nnUNetTrainer", metavar="TRAINER", help="the model's trainer")
    p.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="the model's plans")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD", help="folds to ensemble")
    p.add_argument("-chk", default="checkpoint_final.pth", metavar="CHECKPOINT", help="checkpoint file name")
    p.add_argument("--to", type=int, required=True, metavar="ID", help="dataset id of the new dataset")
    p.add_argument("--name", default="PseudoLabelled", help="dataset name of the new dataset")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="voxels whose highest softmax probability is below P get the ignore label")
    p.add_argument("-device", default="cuda", help="cuda, cpu or mps (default cuda)")
    p.add_argument("--raw", metavar="FOLDER", help="nnUNet_raw folder (default: $nnUNet_raw)")


def run(args) -> int:
    from nnunet_sacl.dataset_conversion.pseudo_labels import PseudoLabelError, pseudo_label
    with refusing(PseudoLabelError, ValueError, FileExistsError):
        print(pseudo_label(args.i, args.d, args.c, args.tr, args.f, args.to, plans=args.p, name=args.name,
                           threshold=args.threshold, checkpoint=args.chk, device=args.device, raw_folder=args.raw))
    return 0


COMMANDS = [Command("pseudo-label", "label unlabelled images with a trained model's predictions, as a new dataset",
                    EXAMPLE, add_arguments, run)]
