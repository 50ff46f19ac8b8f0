"""The transfer study's endpoints (docs/studies/transfer/README.md), per arm and K, as markdown tables, the plot of
both against K (``TRANSFER_DIR/endpoints_vs_train_cases.png``), and the secondary comparisons: SACL against
supervised pretraining, and the aorta (the one target organ the pretraining data labels).

    python docs/studies/transfer/report.py TRANSFER_DIR TEST_LABELS_DIR DATASET_JSON

TRANSFER_DIR is the folder `run.sh` wrote (`WORKDIR/transfer`, with `val/K1..K5` and
`test/K1..K5`). Same endpoints and rule as the pre-registered study of where SACL pays off (../prereg/report.py).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prereg"))
from report import fmt, main as endpoint_tables, rows  # noqa: E402

BASELINE = "nnUNetTrainer_transfer"
SACL, SUPERVISED = f"{BASELINE}@sacl", f"{BASELINE}@supervised"
KS = ("1", "2", "5")


def organ_dice(per_case: list, organ: str) -> dict:
    """{trainer: [Dice of `organ` per fold]} from a test study's per_case.csv."""
    out = {}
    for r in per_case:
        if r["organ"] == organ:
            out.setdefault(r["trainer"], []).append(float(r["dice"]))
    return out


def main(transfer: Path, labels_dir: Path, dataset_json: Path) -> None:
    regimes = [(k, transfer / "val" / f"K{k}", transfer / "test" / f"K{k}") for k in KS]
    points = endpoint_tables(transfer, labels_dir, dataset_json, regimes, BASELINE)
    print("\nSACL against supervised pretraining (difference of their differences to from-scratch; no test):\n")
    print("| K | val: SACL - supervised (case mean) | held-out: SACL - supervised (mean of folds) | per fold |")
    print("|---|---|---|---|")
    for k in KS:
        if k in points.get(SACL, {}) and k in points.get(SUPERVISED, {}):
            s, u = points[SACL][k], points[SUPERVISED][k]
            folds = " / ".join(fmt(a - b, sign=True) for a, b in zip(s[4], u[4]))
            print(f"| {k} | {fmt(s[0] - u[0], sign=True)} | {fmt(s[3] - u[3], sign=True)} | {folds} |")
    print("\nAorta on the held-out scan (Dice, mean over the 3 fold models):\n")
    print("| K | " + " | ".join((BASELINE, SUPERVISED, SACL)) + " |")
    print("|---|---|---|---|")
    for k, _, test in regimes:
        if (test / "per_case.csv").is_file():
            aorta = organ_dice(rows(test / "per_case.csv"), "aorta")
            print(f"| {k} | " + " | ".join(fmt(float(np.mean(aorta[t]))) if t in aorta else "n/a"
                                           for t in (BASELINE, SUPERVISED, SACL)) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*(Path(a) for a in sys.argv[1:]))
