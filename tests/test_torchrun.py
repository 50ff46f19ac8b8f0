"""torchrun itself (``python -m torch.distributed.run``, gloo, 2 CPU ranks, 127.0.0.1) starting ``nnunet_sacl.train``:
both phases, rank 0 alone writes, the first pretraining step equals one process on the concatenated batch, a
two-node rendezvous training the stock baseline, SIGKILL with and without restarts, bad settings refused."""
import glob
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from os.path import isfile, join
from pathlib import Path

import pytest
import torch

from tests.helpers import finish, nnunet_bin, run, RUN_TIMEOUT, start, torchrun, torchrun_env, train_args
from tests.helpers import fold_folder, pretraining_folder, pretraining_log, pretraining_losses, training_log

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(folder) -> list:
    return sorted(str(Path(f).relative_to(folder)) for f in glob.glob(join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(f))


def workers_of(torchrun_pid) -> dict:
    """{global rank: pid} of torchrun's worker processes (its children that carry RANK)."""
    workers = {}
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            ppid = int(re.search(r"^PPid:\s+(\d+)", open(status).read(), re.M).group(1))
            if ppid != torchrun_pid:
                continue
            pid = int(status.split("/")[2])
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except (OSError, AttributeError):
            continue
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if rank:
            workers[int(rank[0][5:])] = pid
    return workers


def kill_rank_when(proc, rank, ready, timeout=RUN_TIMEOUT) -> dict:
    """SIGKILL global rank `rank` of the torchrun `proc` as soon as ready() holds; returns {rank: pid} of all."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the run ended or timed out before it could be killed:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    workers = workers_of(proc.pid)
    os.kill(workers[rank], signal.SIGKILL)
    return workers


@pytest.fixture(scope="module")
def standalone_run(nnunet_env, preprocessed, tmp_path_factory):
    """SACLTrainer_smoke on 2 ranks (torchrun --standalone -m nnunet_sacl.train). Rank 1's nnUNet_results is
    moved to a folder of its own (sitecustomize), so whatever rank 1 writes lands there."""
    rank1 = tmp_path_factory.mktemp("rank1_results")
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('RANK') == '1':\n    os.environ['nnUNet_results'] = os.environ['RANK1_RESULTS']\n")
    env = torchrun_env(nnunet_env, tmp_path_factory.mktemp("results"), RANK1_RESULTS=str(rank1),
                       PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "-m", "nnunet_sacl.cli", "train",
                          *train_args("SACLTrainer_smoke", 0)), env)
    out = finish(proc)
    assert proc.returncode == 0, out[-6000:]
    return fold_folder(env, "SACLTrainer_smoke", 0), str(rank1), out


@pytest.mark.slow
def test_two_ranks_run_both_phases_and_only_rank_0_writes(standalone_run):
    folder, rank1_results, out = standalone_run
    assert "nnunet-sacl train: 2 rank(s), backend gloo, device cpu" in out
    log = training_log(folder)
    assert sorted(pretraining_losses(pretraining_log(folder))) == [0, 1, 2] and "Training done." in log
    for name in ("checkpoint_final.pth", "checkpoint_sacl_encoder.pth", "../plans.json"):
        assert isfile(join(folder, name)), name
    for name in ("checkpoint_final.pth", "progress.png"):          # phase 1's
        assert isfile(join(pretraining_folder(folder), name)), name
    final = torch.load(join(folder, "checkpoint_final.pth"), weights_only=False, map_location="cpu")
    assert final["trainer_name"] == "SACLTrainer_smoke" and final["sacl"]["phase"] == "segmentation"
    # rank 1 writes nothing but its share of nnU-Net's final validation (the cases it predicted)
    written = files_under(rank1_results)
    assert all(re.fullmatch(r".*/fold_0/validation/[^/]+\.nii\.gz", f) for f in written), written
    assert len(written) == 1, written


@pytest.mark.slow
def test_first_step_equals_one_process_on_the_concatenated_batch(nnunet_env, preprocessed, tmp_path):
    env = torchrun_env(nnunet_env, tmp_path)
    trainer = "SACLPretrainer_fixedbatch"
    # the 2-rank run (fold 0) and the one-process run (fold 1) side by side
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "--no-python", nnunet_bin("nnunet-sacl"), "train",
                          *train_args(trainer, 0)), env)
    single = start([sys.executable, "-m", "nnunet_sacl.cli", "train", *train_args(trainer, 1)], env)
    out, single_out = finish(proc), finish(single)
    assert proc.returncode == 0, out[-6000:]
    assert single.returncode == 0, single_out[-6000:]

    def encoder(fold):
        weights = torch.load(join(fold_folder(env, trainer, fold), "checkpoint_sacl_encoder.pth"),
                             weights_only=False)["network_weights"]
        return {k: v for k, v in weights.items() if k.startswith("encoder.")}

    two_ranks, one_process = encoder(0), encoder(1)
    assert two_ranks.keys() == one_process.keys() and len(two_ranks) > 10
    for key, value in one_process.items():
        torch.testing.assert_close(two_ranks[key], value, rtol=0, atol=1e-5, msg=key)
    log = training_log(fold_folder(env, trainer, 1))
    assert "SACL pretraining epoch 0" in log and sum(v.abs().sum() for v in one_process.values()) > 0


@pytest.mark.slow
def test_two_node_rendezvous_on_one_machine_trains_the_stock_baseline(nnunet_env, preprocessed, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous on 127.0.0.1), one rank each, each with its own
    nnUNet_results, training stock nnU-Net (nnUNetTrainer_smoke_noval) through the launcher: it finishes on rank 0's
    node, and the folder of the rank that is not 0 shows that it wrote nothing."""
    trainer = "nnUNetTrainer_smoke_noval"
    endpoint = f"127.0.0.1:{free_port()}"
    results = {node: tmp_path / f"node{node}_results" for node in (0, 1)}
    procs = []
    for node in (0, 1):
        env = torchrun_env(nnunet_env, results[node])
        procs.append(start(torchrun("--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                                    "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "twonode",
                                    "--rdzv_conf", f"is_host={int(node == 0)}", "--local_addr", "127.0.0.1",
                                    "-m", "nnunet_sacl.cli", "train", *train_args(trainer, 0)), env))
    outs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-4000:] for o in outs)
    rank0 = [n for n in (0, 1) if "nnunet-sacl train: 2 rank(s)" in outs[n]]
    assert len(rank0) == 1, outs
    folder = fold_folder({"nnUNet_results": str(results[rank0[0]])}, trainer, 0)
    log = training_log(folder)
    assert "Training done." in log and len(re.findall(r"train_loss", log)) == 2
    assert torch.load(join(folder, "checkpoint_final.pth"), weights_only=False)["trainer_name"] == trainer
    assert files_under(results[1 - rank0[0]]) == []   # the rank that is not 0 wrote nothing


def phase_one_checkpoint_of(folder):
    """Whether phase 1 of the run in ``folder`` has written its first checkpoint."""
    return lambda: isfile(join(pretraining_folder(folder, must_exist=False), "checkpoint_latest.pth"))


@pytest.mark.slow
def test_sigkill_with_max_restarts_resumes_and_repeats_at_most_one_epoch(nnunet_env, preprocessed, tmp_path):
    env = torchrun_env(nnunet_env, tmp_path, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    folder = fold_folder(env, "SACLTrainer_tiny", 0)
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "--monitor-interval",
                          "0.5", "-m", "nnunet_sacl.cli", "train", *train_args("SACLTrainer_tiny", 0)), env)
    kill_rank_when(proc, 1, phase_one_checkpoint_of(folder))
    out = finish(proc)
    assert proc.returncode == 0, out[-6000:]
    log = training_log(folder)
    assert "torchrun restart 1 of at most 1: resumed from the latest checkpoint" in log, log[-3000:]
    epochs = [int(e) for e in re.findall(r"SACL pretraining epoch (\d+):", pretraining_log(folder))]
    assert sorted(set(epochs)) == [0, 1, 2] and len(epochs) - 3 <= 1, epochs
    assert "Training done." in log and isfile(join(folder, "checkpoint_final.pth"))


@pytest.mark.slow
def test_sigkill_without_restarts_ends_every_process_and_names_the_rank_then_c_on_one_process(
        nnunet_env, preprocessed, tmp_path):
    """No restarts: every process is gone within 120 s and torchrun names the lost rank. The run then continues
    with --c in one process: another world size, the batch split anew."""
    env = torchrun_env(nnunet_env, tmp_path)
    folder = fold_folder(env, "SACLTrainer_tiny", 0)
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "--monitor-interval", "0.5",
                          "-m", "nnunet_sacl.cli", "train", *train_args("SACLTrainer_tiny", 0), "--collective-timeout", "60"),
                 env)
    workers = kill_rank_when(proc, 1, phase_one_checkpoint_of(folder))
    killed_at = time.time()
    out = finish(proc, timeout=120)
    assert proc.returncode != 0
    for pid in workers.values():
        while os.path.exists(f"/proc/{pid}") and time.time() - killed_at < 120:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", out) and "SIGKILL" in out, out[-4000:]
    saved = torch.load(join(pretraining_folder(folder), "checkpoint_latest.pth"), weights_only=False, map_location="cpu")
    assert saved["sacl"]["phase"] == "pretraining" and saved["current_epoch"] >= 1

    run([sys.executable, "-m", "nnunet_sacl.cli", "train", *train_args("SACLTrainer_tiny", 0), "--c"], env,
        timeout=RUN_TIMEOUT)
    log = pretraining_log(folder)
    after = log[log.index("Resumed from"):]
    assert sorted(pretraining_losses(after)) == list(range(saved["current_epoch"], 3))
    assert "Training done." in after and "Training done." in training_log(folder)


PROBE = "nnUNetTrainer_probe"
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
                      "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
SETUP = ("cudnn.benchmark", "cudnn.deterministic", "num_threads", "num_interop_threads")
PROBE_SITE = """import os
if "PROBE_DIR" in os.environ:
    import torch
    # set-up a user's site could have before training: nnU-Net's own must replace it
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    if os.environ.get("PROBE_CUDA_REPORTED") == "1":   # nnU-Net sets its cuDNN flags whenever CUDA is available
        torch.cuda.is_available = lambda: True
"""


def probe_env(nnunet_env, folder, cuda_reported=False, **extra):
    """Runs nnUNetTrainer_probe, which writes its process's set-up to folder/probe/rank<R>.json where training
    would start; a sitecustomize gives every process the opposite cuDNN flags first (PROBE_SITE)."""
    site, probe = folder / "site", folder / "probe"
    site.mkdir(parents=True)
    probe.mkdir()
    (site / "sitecustomize.py").write_text(PROBE_SITE)
    return torchrun_env(nnunet_env, folder / "results", PROBE_DIR=str(probe),
                        PROBE_CUDA_REPORTED=str(int(cuda_reported)),
                        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **extra)


def probed(env) -> dict:
    """{rank: set-up} the probe trainer wrote."""
    return {int(f.stem[4:]): json.loads(f.read_text()) for f in Path(env["PROBE_DIR"]).glob("rank*.json")}


@pytest.mark.slow
@pytest.mark.parametrize("cuda_reported", [False, True], ids=["cpu", "cuda-reported"])
def test_training_starts_with_nnunet_trains_set_up(nnunet_env, preprocessed, tmp_path, cuda_reported):
    """Where training starts, a launcher worker has the cuDNN flags and threads that nnUNetv2_train (nnU-Net's
    run_training_entry and run_training, unchanged) gives its process, -device cpu. 'cuda-reported':
    torch.cuda.is_available() answers True in both, so nnU-Net sets its cuDNN flags there. Two workers on one node
    share the cores; OMP_NUM_THREADS makes every process start with other threads than nnU-Net's."""
    cores = multiprocessing.cpu_count()
    # nnUNetv2_train and 2 launcher workers (one worker's threads are nnUNetv2_train's:
    # test_threads_per_device_equal_nnunet_train_entry), started together: each records its state and stops
    stock = probe_env(nnunet_env, tmp_path / "stock", cuda_reported, OMP_NUM_THREADS="1")
    stock_proc = start([nnunet_bin("nnUNetv2_train"), *train_args(PROBE, 0)], stock)
    workers = 2
    env = probe_env(nnunet_env, tmp_path / "launcher", cuda_reported, OMP_NUM_THREADS=str(cores))
    proc = start(torchrun("--standalone", "--nproc_per_node", str(workers), "-m", "nnunet_sacl.cli", "train",
                          *train_args(PROBE, 0)), env)
    stock_out, out = finish(stock_proc), finish(proc)
    assert stock_proc.returncode == 0, stock_out[-6000:]
    nnunet = probed(stock)[0]
    assert nnunet["num_threads"] == cores and (nnunet["cudnn.benchmark"], nnunet["cudnn.deterministic"]) == (
        (True, False) if cuda_reported else (False, True))
    assert proc.returncode == 0, out[-6000:]
    expected = dict(nnunet, num_threads=max(1, cores // workers))   # the cores shared by the node's workers
    assert cores != expected["num_threads"] and probed(env) == {r: expected for r in range(workers)}, (
        probed(env), out[-2000:])


@pytest.mark.slow   # six Python subprocesses, started together (each about 5 s of importing)
def test_threads_per_device_equal_nnunet_train_entry():
    """set_threads against nnU-Net's run_training_entry (its argparse and thread set-up, with run_training replaced
    by a report: nnU-Net sets the threads inline there), per device; a CPU machine can ask for cuda and mps. One
    process each (interop threads can be set once per process)."""
    report = "import torch; print('THREADS', torch.get_num_threads(), torch.get_num_interop_threads())\n"
    procs = {}
    for device in ("cpu", "cuda", "mps"):
        nnunet = (f"import sys\nimport nnunetv2.run.run_training as rt\nrt.run_training = lambda *a, **k: report()\n"
                  f"sys.argv = ['nnUNetv2_train', '1', '3d_fullres', '0', '-device', '{device}']\n"
                  f"rt.run_training_entry()\n")
        ours = f"from nnunet_sacl.train import set_threads\nset_threads('{device}')\nreport()\n"
        # every process starts with other threads than nnU-Net sets: 1 where it sets all cores, all cores elsewhere
        env = dict(os.environ, OMP_NUM_THREADS="1" if device == "cpu" else str(multiprocessing.cpu_count()))
        for side, code in (("nnunet", nnunet), ("ours", ours)):
            procs[device, side] = subprocess.Popen([sys.executable, "-c", f"def report():\n    {report}{code}"],
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    found = {key: re.findall(r"THREADS \d+ \d+", p.communicate(timeout=120)[0]) for key, p in procs.items()}
    for device in ("cpu", "cuda", "mps"):
        assert found[device, "nnunet"] == found[device, "ours"] and len(found[device, "ours"]) == 1, (device, found)


@pytest.mark.slow
def test_a_rank_gone_is_reported_with_its_traceback(nnunet_env, preprocessed, tmp_path):
    """Rank 1 exits; rank 0's next collective gets gloo's own error (a plain RuntimeError): the worker says it lost
    contact and keeps the traceback, on stderr and in the trainer's log."""
    env = probe_env(nnunet_env, tmp_path, PROBE_FAULT="peer_gone")
    proc = start(torchrun("--standalone", "--nproc_per_node", "2", "-m", "nnunet_sacl.cli", "train", *train_args(PROBE, 0)),
                 env)
    out = finish(proc)
    assert proc.returncode != 0
    said = re.search(r"Traceback \(most recent call last\):\n(.*\n)*?RuntimeError: \[\S*gloo/transport/\S+\] "
                     r"Connection closed by peer.*\n(.*\n)*?nnunet-sacl train, rank 0 of 2: lost contact", out)
    assert said, out[-6000:]
    log = training_log(fold_folder(env, PROBE, 0))
    assert "dist.all_reduce" in log and "Connection closed by peer" in log and "rank 0 of 2: lost contact" in log, log


@pytest.mark.slow
def test_an_error_that_says_timed_out_is_not_a_lost_rank(nnunet_env, preprocessed, tmp_path):
    env = probe_env(nnunet_env, tmp_path, PROBE_FAULT="timeout_text")
    proc = start(torchrun("--standalone", "--nproc_per_node", "1", "-m", "nnunet_sacl.cli", "train", *train_args(PROBE, 0)),
                 env)
    out = finish(proc)
    assert proc.returncode != 0 and "RuntimeError: DataLoader timed out after 60 seconds" in out, out[-6000:]
    assert "lost contact" not in out, out[-6000:]


def test_only_communication_errors_are_lost_ranks():
    from torch import distributed as dist
    from nnunet_sacl.train import lost_a_rank
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 1800000ms for "
            "recv operation to complete")
    assert all(lost_a_rank(e) for e in (dist.DistBackendError("NCCL error"), dist.DistNetworkError("x"),
                                        dist.DistStoreError("x"), RuntimeError(gloo)))
    assert not any(lost_a_rank(e) for e in (RuntimeError("DataLoader timed out after 60 seconds"),
                                            RuntimeError("Timeout"), TimeoutError("x"), ValueError(gloo),
                                            RuntimeError(f"Loading failed: {gloo}")))


@pytest.mark.parametrize("extra_env, args, message", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, [], "RANK is set (0) but LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
    ({"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, [],
     "but WORLD_SIZE is not"),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, [],
     "batch size 2 is smaller than the world size 3"),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     ["--dist-backend", "nccl"], "--dist-backend nccl needs -device cuda (got -device cpu)"),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
      "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}, [],
     "torchrun --max-restarts 1 needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"),
], ids=["no-master-addr", "no-world-size", "batch-below-world", "cpu-with-nccl", "restarts-with-shared-store"])
def test_bad_settings_refused_before_training(in_process_env, monkeypatch, capsys, extra_env, args, message):
    """``python -m nnunet_sacl.cli train`` as a torchrun worker would start it, in this process: every refusal comes
    before a process group or a trainer exists."""
    from nnunet_sacl.cli import main
    for key in TORCHRUN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    for key, value in extra_env.items():
        monkeypatch.setenv(key, value)
    assert main(["train", *train_args("SACLTrainer_smoke", 0), *args]) == 1
    err = capsys.readouterr().err
    assert "nnunet-sacl train: error: " in err and message in err, err[-3000:]


def test_help_shows_torchrun_lines_and_imports_no_torch(capsys):
    from nnunet_sacl.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "nnunet-sacl train" in out and "torchrun --standalone" in out
    probe = subprocess.run([sys.executable, "-c", "import sys, nnunet_sacl.train; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr
