"""What a report and the demo's console show, on small hand-made rows (no training): one case mean in the console and
the report, over the organs in the reference for every arm; no p-value or CI from fewer pairs than a test needs; a
one-case report draws per-organ bars and no one-point pairs plot; the demo table's columns and absent organs say what
they are."""
import math

import numpy as np
import pytest
from scipy import stats

from nnunet_sacl.analysis.report import box_figure, fmt_ci, fmt_test
from nnunet_sacl.analysis.stats import MIN_PAIRS, compare_with_baseline, paired_statistics
from nnunet_sacl.analysis.study_report import _comparison_table, _mean_table, paired_plot

BASE, SACL = "nnUNetTrainer_demo", "SACLTrainer_demo"
NAN = math.nan
# one held-out case as the demo's: organ -> ((baseline Dice, SACL Dice), reference voxels). gallbladder is absent
# from the reference and the baseline labelled a few voxels as it (0, a false positive) while SACL did not (NaN);
# kidney is absent and labelled by both (0, 0); stomach is present and SACL missed it (0, which counts)
ONE_CASE = {"liver": ((0.9, 0.8), 900), "spleen": ((0.7, 0.75), 300), "gallbladder": ((0.0, NAN), 0),
            "kidney": ((0.0, 0.0), 0), "stomach": ((0.1, 0.0), 200)}
ORGANS = list(ONE_CASE)
PRESENT_MEANS = (np.mean([0.9, 0.7, 0.1]), np.mean([0.8, 0.75, 0.0]))


def rows_of(cases: dict) -> list:
    """Study rows (trainer, fold, case, organ, dice, nsd, reference_voxels) of {case: ONE_CASE-like dict}."""
    return [{"trainer": t, "fold": 0, "case": case, "organ": o, "dice": v[i], "nsd": v[i], "reference_voxels": n}
            for case, organs in cases.items() for o, (v, n) in organs.items() for i, t in enumerate((BASE, SACL))]


def shifted(k: int) -> dict:
    return {o: ((min(1.0, a + 0.01 * k), min(1.0, b + 0.02 * k)), n) for o, ((a, b), n) in ONE_CASE.items()}


def test_one_case_mean_in_the_console_and_the_report():
    from nnunet_sacl.demo import dice_table
    rows = rows_of({"c1": ONE_CASE})
    mean_row = next(line for line in dice_table(rows, [BASE, SACL], ORGANS).splitlines()
                    if line.strip().startswith("mean"))
    assert mean_row.split()[-3:] == [f"{PRESENT_MEANS[0]:.3f}", f"{PRESENT_MEANS[1]:.3f}",
                                     f"{PRESENT_MEANS[1] - PRESENT_MEANS[0]:+.3f}"]
    report = _mean_table(rows, [BASE, SACL], ORGANS)
    assert report[2].endswith(f"| {PRESENT_MEANS[0]:.4f} |") and report[3].endswith(f"| {PRESENT_MEANS[1]:.4f} |")
    # the paired comparison averages the same organs on both sides
    mean = next(r for r in compare_with_baseline(rows, [BASE, SACL], ORGANS) if r["organ"] == "mean")
    assert mean["n_pairs"] == 1 and mean["mean_diff"] == pytest.approx(PRESENT_MEANS[1] - PRESENT_MEANS[0])


@pytest.mark.parametrize("n", range(1, MIN_PAIRS + 1))
def test_no_test_and_no_interval_from_too_few_pairs(n):
    a = np.linspace(0.5, 0.9, n)
    b = a - np.linspace(0.05, 0.2, n)
    s = paired_statistics(a, b)
    assert s["n"] == n and s["mean_diff"] == pytest.approx((a - b).mean())
    if n < MIN_PAIRS:
        assert math.isnan(s["p_wilcoxon"]) and math.isnan(s["ci_low"]) and math.isnan(s["ci_high"])
        assert fmt_test(s["p_wilcoxon"], n) == f"n = {n}: no test" and fmt_ci(s["ci_low"], s["ci_high"], n) == "no CI"
    else:
        assert s["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue) and s["ci_low"] <= s["ci_high"]
        assert fmt_test(s["p_wilcoxon"], n) == f"{s['p_wilcoxon']:.4f}"


def test_the_report_says_no_test_for_one_case():
    table = compare_with_baseline(rows_of({"c1": ONE_CASE}), [BASE, SACL], ORGANS)
    lines = "\n".join(_comparison_table(table))
    assert "n = 1: no test" in lines and "no CI" in lines and "1.0000" not in lines and "[" not in lines


def test_one_case_draws_bars_per_organ_and_no_pairs_plot(tmp_path):
    rows = rows_of({"c1": ONE_CASE})
    by_trainer = {t: [r for r in rows if r["trainer"] == t] for t in (BASE, SACL)}
    ax = box_figure(by_trainer, ORGANS, [("dice", "Dice")]).axes[0]
    assert {type(p).__name__ for p in ax.patches} == {"Rectangle"}   # bars, not boxes (PathPatch)
    heights = [p.get_height() for p in ax.patches]      # one bar per organ and trainer; absent organs have none
    expected = [0.9, 0.7, NAN, NAN, 0.1, 0.8, 0.75, NAN, NAN, 0.0]
    assert heights == pytest.approx(expected, nan_ok=True)
    assert sum(t.get_text() == "absent" for t in ax.texts) == 2
    assert not paired_plot(rows, [BASE, SACL], ORGANS, tmp_path / "pairs.png")
    assert not (tmp_path / "pairs.png").exists()
    # a few cases: each value a dot; enough cases: boxes
    few = rows_of({f"c{k}": shifted(k) for k in range(3)})
    ax = box_figure({t: [r for r in few if r["trainer"] == t] for t in (BASE, SACL)}, ORGANS,
                    [("dice", "Dice")]).axes[0]
    assert not ax.patches and sum(len(c.get_offsets()) for c in ax.collections) == 2 * 3 * 3
    assert paired_plot(few, [BASE, SACL], ORGANS, tmp_path / "pairs.png") and (tmp_path / "pairs.png").is_file()
    many = rows_of({f"c{k}": shifted(k) for k in range(5)})
    ax = box_figure({t: [r for r in many if r["trainer"] == t] for t in (BASE, SACL)}, ORGANS,
                    [("dice", "Dice")]).axes[0]
    assert len(ax.patches) == 2 * len(ORGANS)            # a box (PathPatch) per organ and trainer


def test_demo_table_names_its_columns_and_marks_absent_organs_alike():
    from nnunet_sacl.demo import NOT_SCORED, dice_table
    table = dice_table(rows_of({"c1": ONE_CASE}), [BASE, SACL], ORGANS)
    lines = table.splitlines()
    assert lines[0].split() == ["organ", BASE, SACL, SACL, "-", "baseline"]
    assert not [line for line in lines if "diff" in line and "not called a difference" not in line]
    assert f"{SACL} - baseline: " in table and "one run of each: not called a difference" in table
    for organ in ("gallbladder", "kidney"):   # one predicted by the baseline only, one by both: shown alike
        row = next(line for line in lines if line.strip().startswith(organ))
        assert row.split() == [organ, "(absent)", NOT_SCORED, NOT_SCORED, NOT_SCORED]
    assert "nan" not in table and "0.000" not in next(line for line in lines if "gallbladder" in line)
    assert f"baseline: {BASE}" in table and "not in the held-out reference label" in table
    assert "mean is over the 3 organs present" in table
    assert f"{BASE} labelled voxels as gallbladder, kidney" in table and f"{SACL} labelled voxels as kidney" in table
