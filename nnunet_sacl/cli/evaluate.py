"""``nnunet-sacl evaluate`` and ``compare``: per-organ Dice and NSD of prediction folders, and the paired
comparison of two (``nnunet_sacl.analysis.evaluation``). Both take the same reference, labels and NSD options."""
from pathlib import Path

from nnunet_sacl.cli import Command, refusing
from nnunet_sacl.defaults import DEFAULT_TOLERANCE_MM, NSD_METHODS

EXAMPLES = {
    "evaluate": "nnunet-sacl evaluate -p pred_sacl -r labelsTs -d dataset.json --tolerance 2 \\\n"
                "      -o sacl.csv\n"
                "nnunet-sacl evaluate -p cv_sacl -r labelsTr -d dataset.json --tolerance 1 \\\n"
                "      --nsd-method surface         # as the FLARE challenges score",
    "compare": "nnunet-sacl compare -a pred_sacl -b pred_nnunet -r labelsTs -d dataset.json \\\n"
               "      --tolerance 2 --names SACL nnU-Net -o comparison",
}


def add_common_arguments(p) -> None:
    p.add_argument("-r", required=True, metavar="REF", help="folder of reference segmentations (e.g. labelsTs)")
    p.add_argument("-d", required=True, metavar="LABELS",
                   help="dataset.json (its 'labels', without background/ignore) or 'liver=1,spleen=2,kidneys=3+4'")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM,
                   help=f"NSD tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})")
    p.add_argument("--nsd-method", choices=NSD_METHODS, default="voxel",
                   help="voxel: one point per boundary voxel (default); surface: DeepMind's area-weighted surface "
                        "elements, as the FLARE and MSD challenges score (use with --tolerance 1 for FLARE)")
    p.add_argument("--file-ending", default=".nii.gz", help="segmentation file ending (default .nii.gz)")


def add_evaluate_arguments(p) -> None:
    p.add_argument("-p", required=True, metavar="PRED", help="folder of predicted segmentations")
    add_common_arguments(p)
    p.add_argument("-o", metavar="CSV", help="CSV to write (default PRED/evaluation.csv)")


def add_compare_arguments(p) -> None:
    p.add_argument("-a", required=True, metavar="FOLDER", help="predictions of the first method (e.g. SACL)")
    p.add_argument("-b", required=True, metavar="FOLDER", help="predictions of the second method (e.g. nnU-Net)")
    add_common_arguments(p)
    p.add_argument("--names", nargs=2, default=["SACL", "nnU-Net"], metavar=("A", "B"),
                   help="method names for tables and plot (default SACL nnU-Net)")
    p.add_argument("-o", default="comparison", metavar="OUT_DIR", help="output folder (default ./comparison)")


def run_evaluate(args) -> int:
    from nnunet_sacl.analysis.evaluation import evaluate_folder, parse_labels, summary_lines
    with refusing(ValueError, FileNotFoundError):
        labels = parse_labels(args.d)
        out = args.o or str(Path(args.p) / "evaluation.csv")
        rows = evaluate_folder(args.p, args.r, labels, args.tolerance, out_csv=out, file_ending=args.file_ending,
                               nsd_method=args.nsd_method)
    print("\n".join(summary_lines(rows, list(labels))))
    print(f"per-case values: {out}")
    return 0


def run_compare(args) -> int:
    from nnunet_sacl.analysis.evaluation import compare, markdown_table, parse_labels
    with refusing(ValueError, FileNotFoundError):
        labels = parse_labels(args.d)
        table = compare(args.a, args.b, args.r, labels, tuple(args.names), args.o, args.tolerance, args.file_ending,
                        args.nsd_method)
    print(markdown_table(table, args.tolerance, args.nsd_method), end="")
    print(f"written to {args.o}: comparison.csv, comparison.md, comparison_boxplot.png, per_case_*.csv")
    return 0


COMMANDS = [Command("evaluate", "per-case, per-organ Dice and NSD of a prediction folder", EXAMPLES["evaluate"],
                    add_evaluate_arguments, run_evaluate),
            Command("compare", "compare two prediction folders per organ (Wilcoxon signed-rank)", EXAMPLES["compare"],
                    add_compare_arguments, run_compare)]
