"""``nnunet-sacl merge-datasets``: several labelled nnU-Net raw datasets -> one raw dataset for SACL pretraining,
organs matched by name (``nnunet_sacl.dataset_conversion.merge``)."""
from nnunet_sacl.cli import Command, refusing

EXAMPLE = ("nnunet-sacl merge-datasets -d 17 218 219 -o 300 --name AbdomenPretrain\n"
           "# -> $nnUNet_raw/Dataset300_AbdomenPretrain: BTCV + AMOS + WORD,\n"
           "#    organs matched by name, which organs each case annotates in\n"
           "#    sacl_annotated_organs.json; pretrain it with -tr SACLPretrainer")


def add_arguments(p) -> None:
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                   help="two or more raw datasets (ids or DatasetXXX_Name folders in nnUNet_raw)")
    p.add_argument("-o", type=int, required=True, metavar="ID", help="dataset id of the merge (1..999, not taken)")
    p.add_argument("--name", default="Merged", help="dataset name of the merge (default Merged)")
    p.add_argument("--vocabulary", metavar="FILE",
                   help="JSON file that extends the shipped organ vocabulary: {\"canonical\": [new names], "
                        "\"synonyms\": {\"name\": \"canonical name\"}}; its synonyms override the shipped ones")
    p.add_argument("--keep-unknown", action="store_true",
                   help="keep a label name that matches no organ as an organ of its own (default: refuse it and "
                        "suggest the closest names)")
    p.add_argument("--raw", metavar="FOLDER", help="nnUNet_raw folder (default: $nnUNet_raw)")


def run(args) -> int:
    from nnunet_sacl.dataset_conversion.merge import MergeError, merge_datasets, read_annotated_organs
    with refusing(MergeError, ValueError, FileExistsError):
        out = merge_datasets(args.d, args.o, args.name, vocabulary=args.vocabulary, keep_unknown=args.keep_unknown,
                             raw_folder=args.raw)
    record = read_annotated_organs(out)
    print(out)
    print(f"{len(record['cases'])} cases, {len(record['organs'])} organs: {', '.join(record['organs'])}")
    for source in record["sources"]:
        print(f"  {source['dataset']}: {source['cases']} cases, "
              + ", ".join(f"{a} -> {b}" if a != b else a for a, b in source["labels"].items()))
    if record["partial"]:
        print("Partial labels: not every case annotates every organ (sacl_annotated_organs.json). Pretrain with "
              "-tr SACLPretrainer; segmentation trainers refuse this dataset.")
    return 0


COMMANDS = [Command("merge-datasets", "merge labelled raw datasets into one for pretraining, organs matched by name",
                    EXAMPLE, add_arguments, run)]
