"""``nnunet-sacl convert-btcv`` and ``convert-flare21``: a challenge download into an nnU-Net raw dataset
(``nnunet_sacl.dataset_conversion.converters``)."""
from nnunet_sacl.cli import Command, refusing
from nnunet_sacl.dataset_conversion.converters import BTCV, FLARE21, FLARE22

LAYOUTS = {"convert-btcv": (BTCV.title, BTCV.example_tree), "convert-flare21": (FLARE21.title, FLARE21.example_tree),
           "convert-flare22": (FLARE22.title, FLARE22.example_tree)}
EXAMPLES = {
    "convert-btcv": "nnunet-sacl convert-btcv ~/Downloads/RawData -d 17\n"
                    "# -> $nnUNet_raw/Dataset017_BTCV",
    "convert-flare21": "nnunet-sacl convert-flare21 ~/Downloads/FLARE21 -d 21\n"
                       "# -> $nnUNet_raw/Dataset021_FLARE21",
    "convert-flare22": "nnunet-sacl convert-flare22 ~/Downloads/FLARE22 -d 22\n"
                       "# -> $nnUNet_raw/Dataset022_FLARE22: imagesTr, labelsTr,\n"
                       "#    imagesTs, imagesUnlabelled",
}


def arguments_of(title: str):
    def add_arguments(p) -> None:
        p.add_argument("src", metavar="SRC", help=f"the downloaded {title} folder")
        p.add_argument("-d", type=int, required=True, metavar="ID", help="nnU-Net dataset id (1..999)")
        p.add_argument("--raw", metavar="FOLDER", help="nnUNet_raw folder (default: $nnUNet_raw)")
        p.add_argument("--name", default=title, help=f"dataset name (default {title})")
    return add_arguments


def run_btcv(args) -> int:
    from nnunet_sacl.dataset_conversion.converters import convert_btcv
    return _convert(convert_btcv, args)


def run_flare21(args) -> int:
    from nnunet_sacl.dataset_conversion.converters import convert_flare21
    return _convert(convert_flare21, args)


def run_flare22(args) -> int:
    from nnunet_sacl.dataset_conversion.converters import convert_flare22
    return _convert(convert_flare22, args)


def _convert(convert, args) -> int:
    with refusing(ValueError, FileExistsError):
        print(convert(args.src, args.d, raw_folder=args.raw, name=args.name))
    return 0


COMMANDS = [Command(command, f"convert the {title} download into an nnU-Net raw dataset", EXAMPLES[command],
                    arguments_of(title), run, description=f"Expected layout: {example_tree}.")
            for command, run in (("convert-btcv", run_btcv), ("convert-flare21", run_flare21),
                                 ("convert-flare22", run_flare22))
            for title, example_tree in [LAYOUTS[command]]]
