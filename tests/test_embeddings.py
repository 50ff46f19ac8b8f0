"""The silhouette step (``nnunet_sacl.analysis.embeddings``) without a model: the steps stubbed, what runs around
them checked. (The step on a trained model: test_end_to_end.py, test_demo_pipeline.py.)"""
import json

import numpy as np
import torch
from threadpoolctl import threadpool_info

from nnunet_sacl.analysis import embeddings


def test_silhouettes_run_on_one_thread(tmp_path, monkeypatch):
    """Every pool at one thread while embeddings and t-SNE run (with more, both degrade many-fold on a busy
    machine), the caller's thread count restored afterwards."""
    seen = []

    def record(*args, **kwargs):
        seen.append((torch.get_num_threads(), {p["prefix"]: p["num_threads"] for p in threadpool_info()}))

    class Manager:
        patch_size, data_identifier, num_segmentation_heads, ignore_label = (8, 8), "x", 3, None

    rng = np.random.default_rng(0)
    monkeypatch.setattr("nnunet_sacl.nnunet.checkpoints.read_checkpoint", lambda f: {"network_weights": None})
    monkeypatch.setattr(embeddings, "build_network", lambda *a: (None, None, Manager, Manager))
    monkeypatch.setattr(embeddings, "preprocessed_cases", lambda *a: [])
    monkeypatch.setattr(embeddings, "organ_embeddings",
                        lambda *a, **k: record() or (rng.normal(size=(12, 4)), np.repeat([1, 2, 3], 4)))
    monkeypatch.setattr(embeddings, "plot_tsne", record)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    threads = torch.get_num_threads()
    scores = embeddings.embeddings_before_after(str(tmp_path), 0, "2d", str(tmp_path), weights_file="w.pth",
                                                out_png=str(tmp_path / "t.png"))
    assert set(scores) == {"before pretraining", "after pretraining"} and len(seen) == 3
    for torch_threads, pools in seen:
        assert torch_threads == 1 and set(pools.values()) == {1}, pools
    assert torch.get_num_threads() == threads
