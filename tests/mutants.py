"""The mutants of docs/testing.md ("What each promise is guarded by"), runnable: each puts one deliberate bug into the
code, runs the tests named for it, expects them to fail, and restores the file (also on Ctrl-C).

    .venv/bin/python tests/mutants.py            # every mutant
    .venv/bin/python tests/mutants.py 3 15       # some, by number
    .venv/bin/python tests/mutants.py --list
    .venv/bin/python tests/mutants.py --check     # every mutant's site is in the code once (nothing run)

A mutant's site is keyed by the function that holds it and the shape of its code, not by its text: ``old`` is parsed
with ``ast`` and matched against the statements (or, where ``old`` and ``new`` are both expressions, the expressions)
of that function by ``ast.dump``, so reformatting, re-wrapping or commenting a guarded line moves nothing. The
matched statements are replaced by ``new`` at their indentation; a matched expression is replaced where it stands.

A mutant is "killed" when pytest reports failed tests (exit code 1); any other outcome (passed, a collection or
usage error) is reported as such. Not collected by pytest (no test_ prefix); run it from the repository root with the
test environment. Slow mutants (nnU-Net subprocesses, torchrun, a collective timeout) take minutes each.
"""
import ast
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    promise: str
    file: str
    function: str     # qualified name of the function holding the site ("Class.method", "function")
    old: str          # the site: whole statement(s) (an `except` clause with its body counts as one), or an
                      # expression where `new` is one too; any indentation, matched by shape
    new: str          # what replaces it: statement(s) (may be empty), or an expression
    tests: tuple


# ---------------------------------------------------------------- sites, keyed by function and shape

def _shape(node: ast.AST) -> str:
    return ast.dump(node, include_attributes=False)


def _expression(text: str):
    """The expression ``text`` is (it may span lines), or None."""
    text = textwrap.dedent(text).strip()
    try:
        return ast.parse(f"(\n{text}\n)", mode="eval").body if text else None
    except SyntaxError:
        return None


def _pattern(mutant: Mutant) -> tuple:
    """('expression', node) where ``old`` and ``new`` are both expressions, else ('statements', [nodes])."""
    expression = _expression(mutant.old)
    if expression is not None and _expression(mutant.new) is not None:
        return "expression", expression
    text = textwrap.dedent(mutant.old)
    try:
        return "statements", ast.parse(text).body
    except SyntaxError:
        if not text.lstrip().startswith("except"):
            raise
        return "statements", ast.parse("try:\n    pass\n" + text).body[0].handlers   # an except clause alone


def _scopes(tree: ast.AST, qualname: str) -> list:
    """The function or class definitions of that qualified name (nested definitions joined by dots)."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if name == qualname:
                    found.append(child)
                visit(child, name + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    return found


def sites(mutant: Mutant, source: str = None) -> list:
    """Every place in ``mutant.function`` whose shape is ``mutant.old``: (first node, last node, kind)."""
    source = (ROOT / mutant.file).read_text() if source is None else source
    scopes = _scopes(ast.parse(source), mutant.function)
    if len(scopes) != 1:
        return []
    kind, pattern = _pattern(mutant)
    found = []
    if kind == "expression":
        shape = _shape(pattern)
        return [(n, n, kind) for n in ast.walk(scopes[0]) if isinstance(n, ast.expr) and _shape(n) == shape]
    shapes = [_shape(p) for p in pattern]
    for node in ast.walk(scopes[0]):
        for _, value in ast.iter_fields(node):
            if not (isinstance(value, list) and value and
                    all(isinstance(v, (ast.stmt, ast.excepthandler)) for v in value)):
                continue
            for i in range(len(value) - len(shapes) + 1):
                if [_shape(v) for v in value[i:i + len(shapes)]] == shapes:
                    found.append((value[i], value[i + len(shapes) - 1], kind))
    return found


def _offset(lines: list, lineno: int, col: int) -> int:
    """Character offset in the source of ``ast``'s (line, UTF-8 byte column)."""
    return sum(len(line) for line in lines[:lineno - 1]) + len(lines[lineno - 1].encode()[:col].decode())


def mutated(mutant: Mutant, source: str = None) -> str:
    """The source with the mutant in it; ValueError unless its site is there exactly once."""
    source = (ROOT / mutant.file).read_text() if source is None else source
    found = sites(mutant, source)
    if len(found) != 1:
        raise ValueError(f"{mutant.file}: {len(found)} sites of the shape of {mutant.old!r} in "
                         f"{mutant.function or 'the module'} (expected 1)")
    first, last, kind = found[0]
    lines = source.splitlines(keepends=True)
    new = textwrap.dedent(mutant.new).strip("\n")
    if kind == "expression":
        start = _offset(lines, first.lineno, first.col_offset)
        end = _offset(lines, last.end_lineno, last.end_col_offset)
        indent = " " * (len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip()) + 8)
        new = new.strip()
        if "\n" in new:          # inside parentheses, the continuation lines' indentation is free
            new = "(" + ("\n" + indent).join(line.strip() for line in new.splitlines()) + ")"
        return source[:start] + new + source[end:]
    start = _offset(lines, first.lineno, 0)
    end = _offset(lines, last.end_lineno + 1, 0) if last.end_lineno < len(lines) else len(source)
    replacement = textwrap.indent(new, " " * first.col_offset) + "\n" if new.strip() else ""
    return source[:start] + replacement + source[end:]


def check(mutant: Mutant) -> str:
    """'' when the site is in the code once and the mutated file still compiles into other code; else why not."""
    source = (ROOT / mutant.file).read_text()
    try:
        changed = mutated(mutant, source)
        compile(changed, mutant.file, "exec")
    except (ValueError, SyntaxError) as e:
        return str(e)
    if _shape(ast.parse(changed)) == _shape(ast.parse(source)):
        return f"{mutant.file}: the mutant changes nothing"
    return ""


T = "nnunet_sacl/nnunet/trainer.py"
P = "nnunet_sacl/nnunet/pretrainer.py"
U = "nnunet_sacl/nnunet/update.py"
C = "nnunet_sacl/nnunet/checkpoints.py"
L = "nnunet_sacl/train/__init__.py"

MUTANTS = [
    Mutant("phase 2 starts from phase 1's network (the pretrained encoder)", T,
           "SACLTrainer.start_from_pretrained_encoder",
           "if weights is not None:\n    unwrap(self.network).load_state_dict(weights)\n",
           "pass\n",
           ("tests/test_handoff.py::test_hand_off_keeps_the_pretrained_encoder_and_starts_a_fresh_optimizer",)),
    Mutant("phase 1 is an nnU-Net training of its own under fold_X/pretraining, apart from phase 2's files", T,
           "SACLTrainer.make_pretrainer",
           "with results_folder(self.pretraining_root):\n"
           "    pretrainer = cls(plans=dict(self.plans_manager.plans, continue_training=self.continue_training),\n"
           "                     configuration=self.configuration_name, fold=self.fold, dataset_json=self.dataset_json,\n"
           "                     device=self.device)\n",
           "pretrainer = cls(plans=dict(self.plans_manager.plans, continue_training=self.continue_training),\n"
           "                 configuration=self.configuration_name, fold=self.fold, dataset_json=self.dataset_json,\n"
           "                 device=self.device)\n",
           ("tests/test_handoff.py::test_hand_off_keeps_the_pretrained_encoder_and_starts_a_fresh_optimizer",
            "tests/test_phases.py::test_phase_one_is_a_pretrainer_with_its_own_schedule_and_the_segmentation_schedules_act_in_phase_two")),
    Mutant("a NaN/inf loss in phase 2 skips its step, is counted, and K in a row stop the run", U,
           "GuardedUpdateMixin.train_step",
           "if not self.nonfinite.is_finite(loss, f\"segmentation epoch {self.current_epoch}\"):\n"
           "    return {'loss': np.nan}\n", "",
           ("tests/test_finetune.py::test_nonfinite_segmentation_losses_are_skipped_counted_and_stop_the_run",)),
    Mutant("a kill never leaves half a checkpoint under its final name", C, "save_atomically",
           "tmp = f\"{filename}.tmp\"\n", "return torch.save(obj, filename)\ntmp = f\"{filename}.tmp\"\n",
           ("tests/test_checkpoints.py::test_sigkill_during_save_leaves_a_whole_checkpoint_and_the_next_save_works",
            "tests/test_checkpoints.py::test_failed_save_removes_its_tmp_and_keeps_the_old_file")),
    Mutant("a trained model segments: nnUNetv2_predict finds the organs", C, "AtomicCheckpointMixin.save_checkpoint",
           "unwrap(self.network).state_dict()",
           "{k: v * 0 if '.seg_layers.' in k else v for k, v in unwrap(self.network).state_dict().items()}",
           ("tests/test_end_to_end.py::test_predict_matches_input_geometry_and_label_range",)),
    Mutant("pretrain_epochs = 0 skips pretraining", T, "SACLTrainer.run_training",
           "not self.pretraining_done and self.pretrain_epochs > 0", "not self.pretraining_done",
           ("tests/test_handoff.py::test_pretrain_epochs_zero_skips_pretraining",)),
    Mutant("phase 2's step and checkpoint are nnU-Net's own", U, "GuardedUpdateMixin.train_step",
           "self.optimizer.zero_grad(set_to_none=True)\nwith self.amp_context():\n"
           "    loss = self.loss(self.network(data), target)\n",
           "with self.amp_context():\n    loss = self.loss(self.network(data), target)\n",
           ("tests/test_handoff.py::test_phase_two_step_and_checkpoint_equal_stock_nnunet",)),
    Mutant("every rank skips a step whose loss is NaN/inf on any rank", "nnunet_sacl/method/nonfinite.py",
           "NonFiniteLossGuard.nonfinite_ranks",
           "if not is_distributed():\n    return [0] if bool(bad) else []\n",
           "return [0] if bool(bad) else []\n",
           ("tests/test_ranks_agree.py::test_a_nan_on_one_rank_is_skipped_by_every_rank",)),
    Mutant("a frozen encoder works under DDP and keeps the ranks equal", "nnunet_sacl/nnunet/finetune.py",
           "FineTuneScheduleMixin.on_train_epoch_start",
           "if isinstance(self.network, DDP):\n"
           "    self.network = DDP(self.network.module, device_ids=self.network.device_ids)\n", "",
           ("tests/test_ranks_agree.py::test_a_nan_on_one_rank_is_skipped_by_every_rank[SACLTrainer_nan_frozen-2]",)),
    Mutant("the GradScaler branch of the update equals the eager step", U, "GuardedUpdateMixin.backward_and_step",
           "self.grad_scaler.unscale_(self.optimizer)\n", "pass\n",
           ("tests/test_cuda_branches.py::test_grad_scaler_update_equals_the_eager_step",)),
    Mutant("phase 1 runs under the trainer's autocast", P, "SACLPretrainer.train_step",
           "with self.amp_context():\n    z, organs, samples = self.embed(data, seg)\n"
           "    loss, statistics = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))\n",
           "with torch.enable_grad():\n    z, organs, samples = self.embed(data, seg)\n"
           "    loss, statistics = self.contrastive_term(z, organs, samples, data, seg, batch.get('keys'))\n",
           ("tests/test_cuda_branches.py::test_bfloat16_autocast_with_grad_scaler_follows_the_eager_step[phase1]",)),
    Mutant("phase 1 compiles its encoder when nnU-Net compiles", "nnunet_sacl/nnunet/contrastive.py",
           "ContrastiveMixin.build_contrastive_parts",
           "self.contrastive_encoder = torch.compile(encoder) if self._do_i_compile() else encoder\n",
           "self.contrastive_encoder = encoder\n",
           ("tests/test_cuda_branches.py::test_compiled_phase_one_encoder_equals_the_eager_step",)),
    Mutant("the on-device augmentation applies the trainer's own settings, not nnU-Net's defaults",
           "nnunet_sacl/nnunet/augment_settings.py", "augment_settings_from_trainer",
           "AugmentSettings(ndim=len(patch_size), dummy_2d=bool(dummy_2d), spacing=spacing, patch_size=patch_size,\n"
           "                initial_patch_size=initial_patch_size, **reader.fields)",
           "AugmentSettings(ndim=len(patch_size), dummy_2d=bool(dummy_2d), spacing=spacing, patch_size=patch_size,\n"
           "                initial_patch_size=initial_patch_size, rotation_range=reader.fields['rotation_range'],\n"
           "                mirror_axes=reader.fields['mirror_axes'])",
           ("tests/test_augment_follows_trainer.py::test_stock_variant_is_followed_or_refused",
            "tests/test_augment_follows_trainer.py::test_a_changed_probability_or_range_reaches_the_device")),
    Mutant("the trainer's transforms are built with the arguments nnU-Net's get_dataloaders passes",
           "nnunet_sacl/nnunet/augment_settings.py", "transform_arguments",
           "rotation, dummy_2d, _, mirror_axes = spatial\n",
           "rotation, dummy_2d, _, _ = spatial\nmirror_axes = None\n",
           ("tests/test_augment_follows_trainer.py::test_transforms_are_read_with_the_arguments_nnunet_passes",)),
    Mutant("the launcher applies nnU-Net's cuDNN flags where training starts", L, "run_worker",
           "set_cudnn_for_training()\n", "",
           ("tests/test_torchrun.py::test_training_starts_with_nnunet_trains_set_up[cuda-reported]",)),
    Mutant("the launcher applies nnU-Net's threads, the cores shared by a node's workers", L, "set_threads",
           "torch.set_num_threads(max(1, multiprocessing.cpu_count() // local_workers))\n",
           "torch.set_num_threads(multiprocessing.cpu_count())\n",
           ("tests/test_torchrun.py::test_training_starts_with_nnunet_trains_set_up[cpu]",)),
    Mutant("the launcher's threads per device are nnUNetv2_train's", L, "set_threads",
           "torch.set_num_interop_threads(1)\n", "pass\n",
           ("tests/test_torchrun.py::test_threads_per_device_equal_nnunet_train_entry",)),
    Mutant("'lost contact' only for communication errors", L, "lost_a_rank",
           "return isinstance(error, dist.DistError) or (\n"
           "    isinstance(error, RuntimeError) and bool(GLOO_TRANSPORT_ERROR.match(str(error))))\n",
           "import re\nif re.search(r'timed out|Timeout|Connection', str(error)):\n    return True\n"
           "return isinstance(error, dist.DistError) or (\n"
           "    isinstance(error, RuntimeError) and bool(GLOO_TRANSPORT_ERROR.match(str(error))))\n",
           ("tests/test_torchrun.py::test_only_communication_errors_are_lost_ranks",
            "tests/test_torchrun.py::test_an_error_that_says_timed_out_is_not_a_lost_rank")),
    Mutant("a rank lost under gloo is reported as one, with its traceback", L, "lost_a_rank",
           "return isinstance(error, dist.DistError) or (\n"
           "    isinstance(error, RuntimeError) and bool(GLOO_TRANSPORT_ERROR.match(str(error))))\n",
           "return isinstance(error, dist.DistError)\n",
           ("tests/test_torchrun.py::test_a_rank_gone_is_reported_with_its_traceback",)),
    Mutant("a checkpoint that cannot be read says why", C, "read_checkpoint",
           "not os.path.exists(filename)", "False",
           ("tests/test_messages.py::test_a_checkpoint_that_cannot_be_read_says_why",
            "tests/test_messages.py::test_embeddings_without_the_encoder_file_says_it_does_not_exist")),
    Mutant("at resume, out of memory is no mismatch", C, "AtomicCheckpointMixin.load_checkpoint",
           "except torch.OutOfMemoryError as e:\n"
           "    raise torch.OutOfMemoryError(f\"Out of memory on {self.device} while resuming from \"\n"
           "                                 f\"{filename_or_checkpoint} (free memory on it, e.g. other processes on \"\n"
           "                                 f\"this GPU): {e}\") from e\n",
           "except ZeroDivisionError as e:\n"
           "    raise torch.OutOfMemoryError(f\"Out of memory on {self.device} while resuming from \"\n"
           "                                 f\"{filename_or_checkpoint} (free memory on it, e.g. other processes on \"\n"
           "                                 f\"this GPU): {e}\") from e\n",
           ("tests/test_trainer.py::test_errors_at_resume_that_are_no_mismatch_say_what_they_are",)),
    Mutant("a per-group schedule sets each group's own LR", "nnunet_sacl/method/schedules.py",
           "GroupWarmupPolyLRScheduler.step",
           "for group, lr in zip(self.optimizer.param_groups, lrs):\n    group['lr'] = lr\n",
           "for group in self.optimizer.param_groups:\n    group['lr'] = lrs[0]\n",
           ("tests/test_lr_schedules.py::test_group_curves_and_scheduler",)),
    Mutant("each --train-cases regime trains every fold on K of its training cases",
           "nnunet_sacl/analysis/study_regimes.py", "subset_splits",
           "sorted(subset_order(s[\"train\"], fold, seed)[:k])",
           "sorted(subset_order(s[\"train\"], fold, seed))",
           ("tests/test_study_regimes.py::test_regimes_and_weights_arms_in_nnunet_files_without_training",)),
    Mutant("the subsets are nested (K=1's case within K=2's)", "nnunet_sacl/analysis/study_regimes.py",
           "subset_splits",
           "sorted(subset_order(s[\"train\"], fold, seed)[:k])",
           "sorted(subset_order(s[\"train\"], fold, seed + k)[:k])",
           ("tests/test_study_regimes.py::test_subsets_are_seeded_and_nested",)),
    Mutant("a weights arm is trained with -pretrained_weights FILE", "nnunet_sacl/analysis/study.py",
           "Study.train_command",
           "run.weights is not None and state == \"new\"", "False",
           ("tests/test_study_regimes.py::test_regimes_and_weights_arms_in_nnunet_files_without_training",)),
    Mutant("without a final checkpoint, the logs' pseudo-Dice curve keeps the last run of an epoch repeated by --c",
           "nnunet_sacl/analysis/training_cost.py", "_per_epoch_from_logs",
           "found[epoch] = value(match)\n",
           "found.setdefault(epoch, value(match))\n",
           ("tests/test_study_regimes.py::test_pseudo_dice_curve_reads_nnunet_log_lines",)),
    Mutant("a refused input is one line `nnunet-sacl COMMAND: error: MESSAGE` with exit code 1",
           "nnunet_sacl/cli/__init__.py", "error_line",
           "return f\"{PROG} {command}: error: {text}\"\n",
           "return f\"{command}: {text}\"\n",
           ("tests/test_cli.py::test_a_refusal_is_one_line_naming_the_command_with_exit_code_1",)),
    Mutant("every public trainer class is found by -tr", "nnunet_sacl/nnunet/variants.py", "trainer_names",
           "isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and not name.startswith(\"_\")\n"
           "and obj.__module__.startswith(module)",
           "isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and not name.startswith(\"_\")\n"
           "and obj.__module__.startswith(module) and not name.endswith(\"_smoke\")",
           ("tests/test_layout.py::test_every_trainer_class_is_found_by_nnunet_train",)),
    Mutant("a merge's label maps are the sources' remapped by name, voxel for voxel",
           "nnunet_sacl/dataset_conversion/merge.py", "merge_datasets",
           "organs = sorted({c for m in mapping.values() for c in m.values()}, key=lambda c: (vocab.order(c), c))\n",
           "organs = sorted({c for m in mapping.values() for c in m.values()})\n",
           ("tests/test_merge.py::test_merge_remaps_voxel_exact_records_annotations_and_keeps_sources",)),
    Mutant("the annotated-organs record says which organs each case annotates",
           "nnunet_sacl/dataset_conversion/merge.py", "merge_datasets",
           "annotated = [o for o in organs if o in mapping[f].values()]\n",
           "annotated = list(organs)\n",
           ("tests/test_merge.py::test_merge_remaps_voxel_exact_records_annotations_and_keeps_sources",)),
    Mutant("left/right spellings and word order match one organ", "nnunet_sacl/dataset_conversion/merge.py",
           "normalize",
           "return \" \".join(rest + sides) if rest else \" \".join(words)\n",
           "return \" \".join(rest) if rest else \" \".join(words)\n",
           ("tests/test_merge.py::test_normalization_and_lookup",)),
    Mutant("images are linked, not copied", "nnunet_sacl/dataset_conversion/merge.py", "_link_or_copy",
           "os.link(src, dst)", "shutil.copy2(src, dst)",
           ("tests/test_merge.py::test_merge_remaps_voxel_exact_records_annotations_and_keeps_sources",)),
    Mutant("short runs draw nnU-Net's progress.png once, after their last epoch",
           "nnunet_sacl/nnunet/short_runs.py", "ProgressAtTheEnd.plot_progress_png",
           "self.trainer.current_epoch >= self.trainer.num_epochs - 1", "True",
           ("tests/test_progress.py::test_short_runs_draw_after_their_last_epoch_only",)),
    Mutant("phase 1's validation scores nearest-neighbour organ classification (no embedding is its own neighbour)",
           "nnunet_sacl/method/neighbours.py", "nearest_neighbour_counts",
           "similarity.fill_diagonal_(float(\"-inf\"))\n", "",
           ("tests/test_neighbours.py::test_counts_equal_a_loop_over_pairs",)),
    Mutant("--c resumes phase 1 from fold_X/pretraining", T, "SACLTrainer.run_pretraining",
           "resume_from = next((f for f in checkpoints if isfile(f)), None) if self.continue_training else None\n",
           "resume_from = None\n",
           ("tests/test_end_to_end.py::test_run_killed_in_each_phase_resumes_with_c",)),
    Mutant("a checkpoint of the earlier phase-1 format is refused with a way on", P, "refuse_earlier_layout",
           "(extras or {}).get('phase') == EARLIER_PRETRAINING", "False",
           ("tests/test_trainer.py::test_checkpoints_of_the_earlier_layout_resume_or_are_refused",)),
    Mutant("the study's (and the demo's) Dice equals nnU-Net's summary.json", "nnunet_sacl/analysis/evaluation.py",
           "dice",
           "return 2.0 * int(np.logical_and(pred_mask, ref_mask).sum()) / total\n",
           "overlap = int(np.logical_and(pred_mask, ref_mask).sum())\nreturn overlap / (total - overlap)\n",
           ("tests/test_study.py::test_dice_equals_nnunet_validation_summary",)),
    Mutant("a test-set prediction older than the model is predicted again", "nnunet_sacl/analysis/study.py",
           "predictions_current",
           "return all(f.is_file() and f.stat().st_mtime_ns > model for f in files)\n",
           "return all(f.is_file() for f in files)\n",
           ("tests/test_study.py::test_predictions_older_than_the_model_are_predicted_again",)),
    Mutant("the joint trainer's loss terms in the log are the mean over ranks", "nnunet_sacl/nnunet/contrastive.py",
           "ContrastiveMixin.epoch_statistics",
           "dict(zip(rank_means, means[2:]))", "rank_means",
           ("tests/test_distributed.py::test_epoch_statistics_and_further_values_are_averaged_over_ranks",)),
    Mutant("statistics averaged over ranks are means, not sums", "nnunet_sacl/method/distributed.py",
           "mean_over_ranks",
           "return (stats / dist.get_world_size()).cpu().tolist()\n",
           "return stats.cpu().tolist()\n",
           ("tests/test_distributed.py::test_mean_over_ranks_in_one_all_reduce",)),
    Mutant("the study's nnUNetv2_predict starts no more processes than test cases ($nnUNet_npp/nps honoured)",
           "nnunet_sacl/analysis/study.py", "prediction_processes",
           "return str(max(1, min(default, cases)))\n",
           "return str(default)\n",
           ("tests/test_study.py::test_prediction_processes_are_nnunets_default_but_no_more_than_cases",)),
    Mutant("a seeded run repeats: each augmentation worker gets its seed", "nnunet_sacl/nnunet/seeding.py",
           "ordered_augmenters",
           "augmenter = MultiThreadedAugmenter(loader, single.transform, workers,\n"
           "                                   num_cached_per_queue=max(2, -(-cached // workers)), seeds=seeds,\n"
           "                                   pin_memory=trainer.device.type == 'cuda', wait_time=0.002)\n",
           "augmenter = MultiThreadedAugmenter(loader, single.transform, workers,\n"
           "                                   num_cached_per_queue=max(2, -(-cached // workers)), seeds=None,\n"
           "                                   pin_memory=trainer.device.type == 'cuda', wait_time=0.002)\n",
           ("tests/test_seeding.py::test_same_seed_same_weights_other_seed_other_weights",)),
    Mutant("a seeded run repeats: batches are served in order", "nnunet_sacl/nnunet/seeding.py",
           "SeededMixin.get_dataloaders",
           "return (train, val) if processes == 0 else ordered_augmenters(self, train, val, processes, seed)\n",
           "return super().get_dataloaders()\n",
           ("tests/test_seeding.py::test_same_seed_same_weights_other_seed_other_weights",)),
    Mutant("phase 1 trains with its own schedule (poly over the pretraining epochs), whatever the variant's phase 2 has",
           P, "SACLPretrainer.configure_optimizers",
           "PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)",
           "PolyLRScheduler(optimizer, self.initial_lr, 1000)",
           ("tests/test_phases.py::test_phase_one_is_a_pretrainer_with_its_own_schedule_and_the_segmentation_schedules_act_in_phase_two",)),
    Mutant("one case mean, over the organs in the reference, in the console, the report and the paired comparison",
           "nnunet_sacl/analysis/stats.py", "scored",
           "return float(row[metric]) if in_reference(row) else math.nan\n",
           "return float(row[metric])\n",
           ("tests/test_report.py::test_one_case_mean_in_the_console_and_the_report",
            "tests/test_evaluation.py::test_only_organs_in_the_reference_count_the_same_for_both_methods")),
    Mutant("the demo's table shows an organ absent from the reference alike in every column", "nnunet_sacl/demo.py",
           "dice_table",
           "lines.append(cells(o + ' (absent)', [NOT_SCORED] * (2 * len(trainers) - 1)))\n",
           "lines.append(cells(o + ' (absent)', [fmt(dice[t][o]) for t in trainers] +\n"
           "                   [signed(dice[t][o] - dice[base][o]) for t in trainers[1:]]))\n",
           ("tests/test_report.py::test_demo_table_names_its_columns_and_marks_absent_organs_alike",)),
    Mutant("no p-value or CI from fewer pairs than a test needs", "nnunet_sacl/analysis/stats.py", "testable",
           "return n >= MIN_PAIRS\n", "return n >= 1\n",
           ("tests/test_report.py::test_no_test_and_no_interval_from_too_few_pairs",
            "tests/test_report.py::test_the_report_says_no_test_for_one_case")),
    Mutant("a one-case report draws a bar per organ, not flat boxes", "nnunet_sacl/analysis/report.py", "drawing",
           '"boxes" if most >= FEWEST_FOR_A_BOX else "bars" if most <= 1 else "dots"', '"boxes"',
           ("tests/test_report.py::test_one_case_draws_bars_per_organ_and_no_pairs_plot",)),
    Mutant("the silhouette step runs on one thread", "nnunet_sacl/analysis/embeddings.py", "embeddings_before_after",
           "with one_thread():\n"
           "    return _embeddings_before_after(model_folder, fold, configuration, preprocessed_folder, weights_file,\n"
           "                                    max_cases, out_png, device, seed)\n",
           "return _embeddings_before_after(model_folder, fold, configuration, preprocessed_folder, weights_file,\n"
           "                                max_cases, out_png, device, seed)\n",
           ("tests/test_embeddings.py::test_silhouettes_run_on_one_thread",)),
    Mutant("a stem adapted to other input channels is divided by their number", "nnunet_sacl/nnunet/prepare_finetune.py",
           "stem_for_channels",
           "summed.repeat(1, channels, *([1] * (weight.ndim - 2))) / channels",
           "summed.repeat(1, channels, *([1] * (weight.ndim - 2)))",
           ("tests/test_prepare_finetune.py::test_stem_for_channels_keeps_the_response_to_a_repeated_image",
            "tests/test_prepare_finetune.py::test_c_two_channels_get_the_channel_averaged_stem")),
    Mutant("prepare-finetune hands nnU-Net the file's weights", "nnunet_sacl/nnunet/prepare_finetune.py",
           "prepare_finetune",
           "{k: v.detach().clone().contiguous() for k, v in weights.items()}",
           "{k: v.detach().clone().contiguous() for k, v in\n"
           " build_nnunet_network(manager, manager.get_configuration(configuration), target_json, True)"
           ".state_dict().items()}",
           ("tests/test_prepare_finetune.py::test_b_prepared_from_the_file_alone_trains_from_it",)),
    Mutant("a SACLTrainer hands every phase-1 setting to its pretrainer (set in __init__ or as class attributes)",
           T, "SACLTrainer.hand_over",
           "attributes += [(name, getattr(self, name)) for name in CONTRASTIVE_SETTINGS]\n",
           "attributes += [(name, getattr(self, name)) for name in CONTRASTIVE_SETTINGS if name != 'temperature']\n",
           ("tests/test_phases.py::test_every_setting_is_handed_to_the_pretrainer",)),
    Mutant("phase 1 augments as the variant does (its transforms handed over)", P,
           "SACLPretrainer.augmentation_transforms",
           "if self.handed is not None:\n    return self.handed.transforms\n", "",
           ("tests/test_phases.py::test_the_variants_augmentation_and_batch_size_hold_in_phase_one",)),
    Mutant("a channel the file lacks gets the target's own intensity properties", "nnunet_sacl/nnunet/prepare_finetune.py",
           "plans_for_target",
           "statistics[str(c)] if c < source_channels else (own_statistics or {}).get(str(c))",
           "statistics[str(source_channel(c, source_channels))]",
           ("tests/test_prepare_finetune.py::test_c_two_channels_get_the_channel_averaged_stem",)),
    Mutant("a gain counts only when it stands clear of another seed of the baseline",
           "nnunet_sacl/analysis/stats.py", "verdict", "clear = spread\n", "clear = 0.0\n",
           ("tests/test_study_seeds.py::test_a_gain_within_one_seeds_spread_is_not_called_a_gain",)),
    Mutant("segmentation training on pseudo-labels is refused unless asked for", "nnunet_sacl/nnunet/partial_labels.py",
           "refuse_partial_labels", "dataset_json.get(PSEUDO_KEY) and not _pseudo_labels_allowed()", "False",
           ("tests/test_flare22.py::test_segmentation_on_pseudo_labels_is_refused_unless_asked_for",)),
    Mutant("pseudo-label resumes: a case already labelled is not predicted again",
           "nnunet_sacl/dataset_conversion/pseudo_labels.py", "pseudo_label",
           "[(c, p) for c, p in zip(cases, images) if not (target / 'labelsTr' / f'{c}.nii.gz').is_file()]",
           "[(c, p) for c, p in zip(cases, images)]",
           ("tests/test_flare22.py::test_a_second_call_does_no_work",)),
    Mutant("study --seeds: each seed's run is trained with that seed", "nnunet_sacl/analysis/study.py",
           "Run.environment", "{} if self.seed is None else {SEED_VARIABLE: str(self.seed)}", "{}",
           ("tests/test_study_seeded.py::test_each_seed_is_its_own_run_and_the_same_seed_the_same_run",)),
    Mutant("study --seeds refuses a trainer that ignores the seed", "nnunet_sacl/analysis/study.py",
           "_check_trainers", "seeded and not issubclass(cls, SeededMixin)", "False",
           ("tests/test_study_seeded.py::test_a_trainer_that_ignores_the_seed_is_refused",)),
    Mutant("study --dry-run counts a SACLTrainer's pretraining iterations", "nnunet_sacl/analysis/study_plan.py",
           "run_cost", "pretrain * int(trainer.num_iterations_per_epoch)", "0",
           ("tests/test_study_seeded.py::test_dry_run_lists_runs_iterations_hours_and_array_and_writes_nothing",)),
    Mutant("a merge with a pseudo-labelled source keeps its record, so segmentation training on the merge is refused",
           "nnunet_sacl/dataset_conversion/merge.py", "merge_datasets",
           "if pseudo:\n    extra[PSEUDO_KEY] = pseudo\n", "",
           ("tests/test_merge.py::test_a_pseudo_labelled_source_merges_with_its_ignore_label_and_record",)),
    Mutant("a source's ignore label (pseudo-label's unsure voxels) stays ignored in the merge",
           "nnunet_sacl/dataset_conversion/merge.py", "merge_datasets",
           "if source_ignore is not None:\n    lut[source_ignore] = ignore\n", "",
           ("tests/test_merge.py::test_a_pseudo_labelled_source_merges_with_its_ignore_label_and_record",)),
    Mutant("the nnssl_adaptation_plan names every field nnU-Net master's fine-tuning path reads",
           "nnunet_sacl/nnunet/nnssl_format.py", "adaptation_plan",
           '{"key_to_encoder": network.key_to_encoder, "key_to_stem": network.key_to_stem, '
           '"keys_to_in_proj": list(network.keys_to_in_proj), "key_to_lpe": getattr(network, "key_to_lpe", None)}',
           '{"key_to_encoder": network.key_to_encoder, "key_to_stem": network.key_to_stem, '
           '"keys_to_in_projection": list(network.keys_to_in_proj), "key_to_lpe": getattr(network, "key_to_lpe", None)}',
           ("tests/test_nnssl_format.py::test_the_written_plan_is_what_nnunet_master_and_nnssl_read",)),
]


def run(number: int, mutant: Mutant, env: dict) -> str:
    path = ROOT / mutant.file
    original = path.read_text()
    try:
        changed = mutated(mutant, original)
    except ValueError as e:
        return f"SITE NOT FOUND ({e})"
    path.write_text(changed)
    try:
        start = time.time()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
                           cwd=ROOT, capture_output=True, text=True, env=env)
        seconds = time.time() - start
    finally:
        path.write_text(original)
    lines = r.stdout.strip().splitlines()
    last = (lines or [""])[-1]
    why = next((line[1:].strip() for line in lines if line.startswith("E ")), "")   # the first failed assertion
    verdict = "killed" if r.returncode == 1 else f"NOT KILLED (pytest exit code {r.returncode})"
    return f"{verdict} in {seconds:.0f} s: {last}" + (f"\n      {why[:300]}" if why else "")


def main(argv) -> int:
    if argv[:1] == ["--check"]:      # every site occurs exactly once and its mutant compiles (nothing run)
        bad = [(i, m, check(m)) for i, m in enumerate(MUTANTS, 1)]
        bad = [(i, m, why) for i, m, why in bad if why]
        print("\n".join(f"{i}. {m.file} {m.function}: {why}" for i, m, why in bad)
              or f"all {len(MUTANTS)} sites found once")
        return 1 if bad else 0
    if argv[:1] == ["--list"]:
        for i, m in enumerate(MUTANTS, 1):
            print(f"{i:2d}. {m.promise}  [{m.file}: {m.function}]  {' '.join(m.tests)}")
        return 0
    chosen = [int(a) for a in argv] or range(1, len(MUTANTS) + 1)
    # a kill (also in the background, where SIGINT is ignored) still restores the file under way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    survived = 0
    with tempfile.TemporaryDirectory(prefix="sacl-mutants-") as data:
        env = dict(os.environ, SACL_TEST_DATA=data)     # the generated dataset planned once, for every mutant
        for i in chosen:
            outcome = run(i, MUTANTS[i - 1], env)
            survived += not outcome.startswith("killed")
            print(f"{i:2d}. {MUTANTS[i - 1].promise}: {outcome}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
