"""Do organs form clusters? Mask-pooled organ embeddings of an encoder before and after SACL pretraining, a t-SNE
picture coloured by organ and the silhouette score (cosine) as one number for cluster quality.

torch and nnU-Net are imported inside the functions that need them.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from os.path import isdir, join
from typing import Dict, Iterator, Optional, Tuple

import numpy as np


def build_network(model_folder: str, configuration: str, weights: Optional[dict] = None, seed: int = 0):
    """The trained model's network as nnU-Net builds it (seeded initialisation), optionally with saved weights
    (a checkpoint's network_weights).
    Returns (network, plans_manager, configuration_manager, label_manager)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sacl.nnunet.network import build_nnunet_network
    plans_manager = PlansManager(load_json(join(model_folder, "plans.json")))
    dataset_json = load_json(join(model_folder, "dataset.json"))
    cm = plans_manager.get_configuration(configuration)
    lm = plans_manager.get_label_manager(dataset_json)
    torch.manual_seed(seed)
    network = build_nnunet_network(plans_manager, cm, dataset_json, deep_supervision=False)
    if weights is not None:
        network.load_state_dict(weights)
    return network.eval(), plans_manager, cm, lm


def preprocessed_cases(folder: str, max_cases: Optional[int] = None) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(identifier, data [C, *spatial], seg [1, *spatial]) of nnU-Net-preprocessed cases; -1 (outside the
    nonzero mask) becomes background."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    dataset = infer_dataset_class(folder)(folder)
    for key in list(dataset.identifiers)[:max_cases]:
        data, seg, _, _ = dataset.load_case(key)
        seg = np.asarray(seg).copy()
        seg[seg < 0] = 0
        yield key, np.asarray(data, dtype=np.float32), seg


def patches(data: np.ndarray, seg: np.ndarray, patch_size) -> Iterator[tuple]:
    """Non-overlapping patch_size tiles covering the case (zero-padded at the far end), as [1, C, *patch] tensors;
    a 2d patch size tiles every slice of a 3d case (nnU-Net's 2d configuration keeps cases as volumes)."""
    import torch
    if len(patch_size) == data.ndim - 2:
        for z in range(data.shape[1]):
            yield from patches(data[:, z], seg[:, z], patch_size)
        return
    shape = data.shape[1:]
    padded = [int(np.ceil(s / p) * p) for s, p in zip(shape, patch_size)]
    pad = [(0, 0)] + [(0, p - s) for s, p in zip(shape, padded)]
    data, seg = np.pad(data, pad), np.pad(seg, pad)
    for start in np.ndindex(*[p // q for p, q in zip(padded, patch_size)]):
        window = (slice(None),) + tuple(slice(i * q, (i + 1) * q) for i, q in zip(start, patch_size))
        yield torch.from_numpy(data[window][None]), torch.from_numpy(seg[window][None].astype(np.int64))


def organ_embeddings(network, cases, patch_size, num_classes: int, ignore_label=None, stage: int = -1,
                     device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """One L2-normalised embedding per (patch, organ present): the encoder stage's features mask-pooled."""
    import torch
    from torch.nn import functional as F

    from nnunet_sacl.nnunet.network import encoder_of
    from nnunet_sacl.method.pooling import mask_pool
    encoder = encoder_of(network).to(device)
    rows, labels = [], []
    with torch.no_grad():
        for _, data, seg in cases:
            for x, s in patches(data, seg, patch_size):
                e, k, _ = mask_pool(encoder(x.to(device))[stage], s.to(device), num_classes, ignore_label)
                rows.append(F.normalize(e.float(), dim=1).cpu())
                labels.append(k.cpu())
    return torch.cat(rows).numpy(), torch.cat(labels).numpy()


def cluster_quality(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score with cosine distance, in [-1, 1]: higher means organs form tighter, better separated
    clusters. NaN when fewer than two organs are present."""
    from sklearn.metrics import silhouette_score
    if len(np.unique(labels)) < 2 or len(labels) <= len(np.unique(labels)):
        return float("nan")
    return float(silhouette_score(embeddings, labels, metric="cosine"))


def plot_tsne(groups: Dict[str, Tuple[np.ndarray, np.ndarray]], scores: Dict[str, float], label_names: Dict[int, str],
              out_png: str, seed: int = 0) -> None:
    """One t-SNE panel per group (e.g. 'before', 'after'), points coloured by organ, its score in the title."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 7), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (title, (emb, lab)) in zip(axes[0], groups.items()):
        perplexity = float(max(2.0, min(30.0, (len(emb) - 1) / 3)))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
        for k in np.unique(lab):
            # distinct hues for the first 10 organs (tab20's even entries), their light twins after that
            colour = cmap((2 * (int(k) - 1) + (int(k) - 1) // 10) % 20)
            ax.scatter(*xy[lab == k].T, s=18, color=colour, label=label_names.get(int(k), str(k)))
        ax.set_title(f"{title}: silhouette {scores[title]:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@contextmanager
def one_thread():
    """torch and every OpenMP and BLAS pool loaded (torch's and scikit-learn's own libgomp, numpy's OpenBLAS) at one
    thread while the block runs, restored afterwards. The embeddings are many small forward passes and t-SNE a
    thousand short parallel loops: each waits at a barrier for all of its threads, and on a machine whose cores are
    busy with other work (a training beside it) a thread waits for a time slice at every barrier. One thread does
    not wait: it costs little on an idle machine and avoids a many-fold slowdown on a busy one (docs/performance.md).
    """
    import sklearn.manifold  # noqa: F401  (loads scikit-learn's OpenMP runtime, so that the limit reaches it)
    import sklearn.metrics  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def embeddings_before_after(model_folder: str, fold, configuration: str, preprocessed_folder: str,
                            weights_file: Optional[str] = None, max_cases: int = 20, out_png: Optional[str] = None,
                            device: str = "cpu", seed: int = 0) -> Dict[str, float]:
    """Silhouette of the freshly initialised encoder ('before') and of the pretrained one ('after', by default the
    fold's checkpoint_sacl_encoder.pth); writes the t-SNE picture when out_png is given. Runs on one thread
    (``one_thread``)."""
    with one_thread():
        return _embeddings_before_after(model_folder, fold, configuration, preprocessed_folder, weights_file,
                                        max_cases, out_png, device, seed)


def _embeddings_before_after(model_folder, fold, configuration, preprocessed_folder, weights_file, max_cases,
                             out_png, device, seed) -> Dict[str, float]:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_sacl.nnunet.checkpoints import read_checkpoint
    weights_file = weights_file or join(model_folder, f"fold_{fold}", "checkpoint_sacl_encoder.pth")
    pretrained = read_checkpoint(weights_file)["network_weights"]   # read first: a bad file fails before any work
    groups = {}
    for title, weights in (("before pretraining", None), ("after pretraining", pretrained)):
        network, _, cm, lm = build_network(model_folder, configuration, weights, seed)
        cases = preprocessed_cases(join(preprocessed_folder, cm.data_identifier), max_cases)
        groups[title] = organ_embeddings(network, cases, cm.patch_size, lm.num_segmentation_heads,
                                         lm.ignore_label, device=device)
    names = load_json(join(model_folder, "dataset.json"))["labels"]
    label_names = {v: k for k, v in names.items() if isinstance(v, int)}
    scores = {title: cluster_quality(*g) for title, g in groups.items()}
    if out_png:
        plot_tsne(groups, scores, label_names, out_png, seed)
    return scores


def _env_folder(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise FileNotFoundError(f"{name} is not set: export it ({what})")
    return value


def model_folder_of(dataset, trainer: str, plans: str, configuration: str) -> Tuple[str, str]:
    """(dataset name, nnU-Net's output folder of TRAINER__PLANS__CONFIGURATION) with errors that say what is
    missing: an unknown dataset id or name, or a model that was not trained."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:  # nnU-Net's message lists the folders it searched
        raise FileNotFoundError(f"dataset {dataset}: {' '.join(str(e).split())}") from e
    _env_folder("nnUNet_results", "the folder nnUNetv2_train wrote the model to")
    folder = get_output_folder(dataset_name, trainer, plans, configuration)
    if not isdir(folder):
        raise FileNotFoundError(f"no trained model {folder} (trainer {trainer}, plans {plans}, configuration "
                                f"{configuration}); check -tr, -p and -c")
    return dataset_name, folder


def model_embeddings(dataset, configuration: str = "3d_fullres", fold="0", trainer: str = "SACLTrainer",
                     plans: str = "nnUNetPlans", weights_file: Optional[str] = None, max_cases: int = 20,
                     out_png: Optional[str] = None, device: str = "cpu") -> Dict[str, float]:
    """``embeddings_before_after`` of the model nnU-Net trained (found through nnUNet_results) on its dataset's
    preprocessed cases (nnUNet_preprocessed). FileNotFoundError names what is missing (an environment variable,
    the dataset, the model, the weights file), UnreadableCheckpoint a weights file that cannot be read."""
    preprocessed = _env_folder("nnUNet_preprocessed", "the folder nnUNetv2_plan_and_preprocess wrote the dataset to")
    dataset_name, model_folder = model_folder_of(dataset, trainer, plans, configuration)
    encoder_file = join(model_folder, f"fold_{fold}", "checkpoint_sacl_encoder.pth")
    if weights_file is None and not os.path.isfile(encoder_file) and \
            os.path.isfile(join(model_folder, f"fold_{fold}", "checkpoint_final.pth")):
        raise FileNotFoundError(f"{trainer} fold {fold} has no pretrained encoder ({encoder_file}): only SACL "
                                f"pretraining writes one (SACLTrainer's phase 1, SACLPretrainer), and this run did "
                                f"not pretrain (the joint trainer and stock nnU-Net never do); pass --weights FILE "
                                f"to look at another encoder")
    return embeddings_before_after(model_folder, fold, configuration, join(preprocessed, dataset_name), weights_file,
                                   max_cases, out_png, device)
