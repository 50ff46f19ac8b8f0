"""``nnunet-sacl export-submission``: nnUNetv2_predict output as a challenge scores it
(``nnunet_sacl.dataset_conversion.submission``)."""
from nnunet_sacl.cli import Command, refusing
from nnunet_sacl.dataset_conversion.submission import FORMATS

CHALLENGES = tuple(sorted(FORMATS))
EXAMPLE = ("nnunet-sacl export-submission -i pred_btcv -o submission_btcv --challenge btcv \\\n"
           "      --images $nnUNet_raw/Dataset017_BTCV/imagesTs")


def add_arguments(p) -> None:
    p.add_argument("-i", required=True, metavar="PRED", help="nnUNetv2_predict output folder")
    p.add_argument("-o", required=True, metavar="OUT",
                   help="new folder for the submission files (must not exist, or be empty)")
    p.add_argument("--challenge", required=True, choices=CHALLENGES, help="which challenge's format")
    p.add_argument("--images", required=True, metavar="IMAGES_TS",
                   help="the converted dataset's imagesTs (the images predicted on)")


def run(args) -> int:
    from nnunet_sacl.dataset_conversion.submission import export_submission
    with refusing(ValueError, FileExistsError):
        print(export_submission(args.i, args.o, args.challenge, args.images))
    return 0


COMMANDS = [Command("export-submission", "rename and check nnUNetv2_predict output for a challenge submission",
                    EXAMPLE, add_arguments, run)]
