"""The plot of cpu_steps.py's scaling result: FLOPs at the full patch and CPU time of the SACL and paper-style steps
as the organs present grow, one line per batch size.

    python benchmarks/plot_scaling.py benchmarks/results/scaling_cpu_<time>.json [--out docs/scaling.png]
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STYLE = {"sacl": ("SACL (mask pooling)", "tab:blue"), "paper_style": ("paper-style (one pass per organ)", "tab:red")}


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, (flops_ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for step, (label, colour) in STYLE.items():
        for batch, marker, line in ((2, "o", "-"), (8, "s", "--")):
            pts = sorted((r["organs"], r["flops"], r["cpu_ms"]) for r in rows
                         if r["step"] == step and r["batch_size"] == batch)
            if not pts:
                continue
            flops_ax.plot([p[0] for p in pts], [p[1] / 1e12 for p in pts], line, marker=marker, color=colour,
                          label=f"{label}, batch {batch}")
            timed = [p for p in pts if p[2] is not None]
            if timed:
                cpu_ax.plot([p[0] for p in timed], [p[2] / 1e3 for p in timed], line, marker=marker, color=colour,
                            label=f"{label}, batch {batch}")
    full = rows[0].get("full_patch_size")
    flops_ax.set(xlabel="organs present per sample", ylabel="TFLOP per step (forward + backward)",
                 title=f"FLOPs at patch {'x'.join(map(str, full))} (counted)")
    cpu_ax.set(xlabel="organs present per sample", ylabel="seconds per step (median)", yscale="log",
               title=f"CPU wall time at patch {'x'.join(map(str, results['patch_size']))} "
                     f"({results.get('machine', 'CPU')})")
    for ax in (flops_ax, cpu_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", type=Path, help="a scaling JSON written by cpu_steps.py scaling")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "scaling.png")
    args = p.parse_args(argv)
    results = json.loads(args.result.read_text())
    if results.get("kind") != "scaling":
        raise SystemExit(f"{args.result} is not a scaling result (kind {results.get('kind')!r})")
    plot(results, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
