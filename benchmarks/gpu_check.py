"""The GPU check: every code path that only a GPU takes, in at most 10 minutes on one GPU, as one command.

    python benchmarks/gpu_check.py                         # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check    # checks this script on a CPU (~10 min)

Stages, each in its own subprocess with a time limit (a stage that runs over is stopped and recorded as such, the
next one starts), in a temporary nnUNet_raw / nnUNet_preprocessed / nnUNet_results:

1. the generated dataset (``nnunet-sacl synthetic-data``), planned and preprocessed by nnU-Net (3d_fullres);
2. ``nnUNetv2_train`` on the device with the smoke trainers: ``SACLTrainer_smoke`` eager (``nnUNet_compile=f``)
   and compiled (``nnUNet_compile=t``: phase 1's encoder and phase 2's network through torch.compile), the joint
   trainer compiled, ``SACLTrainer_torchaug_smoke`` (phase 1 augmented on the device); each must finish with
   finite losses in its log, float16 autocast and GradScaler on CUDA;
3. ``step_benchmark.py`` (stock vs SACL vs paper-style step at the BTCV-like plan, eager);
4. ``data_path_benchmark.py`` on the small BTCV-like dataset (on-device vs CPU augmentation, nnU-Net's loaders).

The summary (``gpu_check_<device>_<UTC time>.json`` in ``--out``, next to the CPU results) holds for every stage
its command, exit code, seconds, whether it timed out, what was checked and the last lines of its output; the
benchmarks write their own JSON files to the same folder, named in the summary.
"""
import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
D = "991"
# (trainer, fold, nnUNet_compile, time limit in seconds on a GPU)
SMOKE_RUNS = [("SACLTrainer_smoke", 0, "f", 50), ("SACLTrainer_smoke", 1, "t", 120),
              ("SACLTrainer_joint_smoke", 0, "t", 90), ("SACLTrainer_torchaug_smoke", 2, "f", 50)]
BUDGET_S = 600          # the stages' limits add up to 560 s; no stage runs past this from the start


def tool(name: str) -> str:
    """A console script of this environment (nnUNetv2_train, nnunet-sacl ...), else the one on PATH."""
    return str(BIN / name) if (BIN / name).exists() else name


def run_stage(name: str, cmd: list, env: dict, limit: float, logs: Path, deadline: float) -> dict:
    start = time.time()
    limit = max(1.0, min(limit, deadline - start))
    log = logs / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc, timed_out = proc.wait(), True
    seconds = time.time() - start
    tail = log.read_text(errors="replace").splitlines()[-25:]
    print(f"{name}: {'TIMED OUT' if timed_out else 'exit ' + str(rc)} after {seconds:.0f} s "
          f"(limit {limit:.0f} s)", flush=True)
    return {"stage": name, "command": shlex.join(cmd), "rc": rc, "seconds": round(seconds, 1),
            "limit_s": limit, "timed_out": timed_out, "ok": rc == 0 and not timed_out, "output_tail": tail}


def training_checks(results: Path, trainer: str, fold: int) -> dict:
    """What the smoke run's training log says: losses finite, both phases (SACL), autocast/compile as asked."""
    folder = results / f"Dataset{D}_SACLSynthetic" / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"
    logs = sorted(folder.glob("training_log_*.txt"))
    if not logs:
        return {"log_found": False}
    text = logs[-1].read_text()
    losses = [float(x) for x in re.findall(r"(?:train_loss|contrastive loss) (-?[\d.]+|nan|inf)", text)]
    return {"log_found": True, "losses": losses, "losses_finite": bool(losses) and all(
        abs(x) != float("inf") and x == x for x in losses), "training_done": "Training done." in text,
            "pretraining_epochs": len(re.findall(r"SACL pretraining epoch \d+:", text)),
            "checkpoint_final": (folder / "checkpoint_final.pth").exists(),
            "compiled": "Using torch.compile" in text, "skipped_steps": "Skipped" in text}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (the check); cpu only checks this script, with tiny benchmark sizes")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the JSON files")
    p.add_argument("--keep", action="store_true", help="keep the temporary nnU-Net folders (printed)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = args.device == "cpu"
    scale = 10 if cpu else 1         # time limits: a (shared) CPU runs the same smoke trainers many times slower
    root = Path(tempfile.mkdtemp(prefix="sacl_gpu_check_"))
    logs = root / "logs"
    logs.mkdir()
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), PYTHONUNBUFFERED="1",
               # the tests' trainers (tests/trainers) hold the joint and on-device smoke lengths
               nnUNet_extTrainer=os.pathsep.join([str(REPO / "trainers"), str(REPO / "tests" / "trainers")]),
               PYTHONPATH=os.pathsep.join(
                   [str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("nnUNet_n_proc_DA", str(min(8, os.cpu_count() or 1)))
    stages = []
    started = datetime.now(timezone.utc)
    deadline = time.time() + BUDGET_S * scale

    stages.append(run_stage("dataset", [tool("nnunet-sacl"), "synthetic-data", "-d", D], env, 20 * scale, logs,
                            deadline))
    stages.append(run_stage("plan_and_preprocess", [tool("nnUNetv2_plan_and_preprocess"), "-d", D, "-c",
                                                    "3d_fullres", "-np", "4"], env, 45 * scale, logs, deadline))
    for trainer, fold, compile_, limit in SMOKE_RUNS:
        name = f"train_{trainer}_{'compiled' if compile_ == 't' else 'eager'}"
        stage = run_stage(name, [tool("nnUNetv2_train"), D, "3d_fullres", str(fold), "-tr", trainer, "-device",
                                 args.device], dict(env, nnUNet_compile=compile_), limit * scale, logs, deadline)
        stage["checks"] = training_checks(root / "results", trainer, fold)
        stage["ok"] = stage["ok"] and stage["checks"].get("losses_finite", False) and \
            stage["checks"].get("checkpoint_final", False)
        stages.append(stage)

    before = set(args.out.glob("*.json"))
    small = ["--patch-size", "16", "32", "32", "--iters", "2", "--warmup", "1", "--profile-steps", "1"] if cpu else \
        ["--iters", "20", "--warmup", "5"]
    stages.append(run_stage("step_benchmark", [sys.executable, str(REPO / "benchmarks" / "step_benchmark.py"),
                                               "--device", args.device, "--no-compile", "--out", str(args.out),
                                               *small], env, 75 * scale, logs, deadline))
    dp_root = root / "data_path"
    stages.append(run_stage("data_path_dataset", [sys.executable, str(REPO / "benchmarks" /
                                                                     "make_btcv_sized_dataset.py"),
                                                  "--root", str(dp_root), "--small", "-np", "4"], env, 40 * scale,
                            logs, deadline))
    loader = ["--workers", "2", "--iters", "4", "--warmup", "2"] if cpu else \
        ["--workers", "4", "8", "--iters", "40", "--warmup", "10"]
    stages.append(run_stage("data_path_benchmark", [sys.executable, str(REPO / "benchmarks" /
                                                                       "data_path_benchmark.py"),
                                                    "--root", str(dp_root), "--device", args.device, "--no-compile",
                                                    "--out", str(args.out), *loader], env, 70 * scale, logs, deadline))

    gpu = None
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    summary = {"kind": "gpu_check", "device": args.device, "gpu": gpu, "torch": torch_version,
               "cpu_cores": os.cpu_count(), "host": platform.node(), "date": started.isoformat(timespec="seconds"),
               "command": shlex.join([Path(sys.executable).name] + sys.argv),
               "total_seconds": round(sum(s["seconds"] for s in stages), 1),
               "all_ok": all(s["ok"] for s in stages), "stages": stages,
               "benchmark_files": sorted(f.name for f in set(args.out.glob("*.json")) - before)}
    out = args.out / f"gpu_check_{args.device}_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    failed = [s["stage"] for s in stages if not s["ok"]]
    print(("FAILED: " + ", ".join(failed) if failed else "all stages passed")
          + f" in {summary['total_seconds']:.0f} s; summary {out}" + (f"; folders kept in {root}" if args.keep else ""))
    if not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
