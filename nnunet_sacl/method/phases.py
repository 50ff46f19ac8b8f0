"""Organ x contrast-phase labels (as in the SACL authors' released code: 24 classes = organs x phases).

A dataset may carry ``sacl_phases.json`` next to its dataset.json::

    {"phases": ["non-contrast", "arterial", "portal-venous"],
     "cases": {"case_0001": "arterial", "case_0002": "portal-venous", ...}}

With phase labels on, the same organ in two phases is a negative pair: contrastive label = organ * P + phase.
"""
import json
from os.path import isfile, join
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

PHASES_FILE = "sacl_phases.json"


def find_phases_file(folders: Sequence[Optional[str]]) -> str:
    """The first ``sacl_phases.json`` among folders (e.g. the preprocessed and the raw dataset folder)."""
    candidates = [join(f, PHASES_FILE) for f in folders if f]
    for path in candidates:
        if isfile(path):
            return path
    raise FileNotFoundError(f"organ x phase labels are on, but there is no {PHASES_FILE} in {candidates}. Write "
                            f"it next to dataset.json: {{\"phases\": [...], \"cases\": {{\"case_id\": \"phase\"}}}}")


def read_phases(path: str, case_ids: Iterable[str]) -> Tuple[Dict[str, int], List[str]]:
    """(phase index per case, phase names) from a sacl_phases.json; every case id must have a listed phase."""
    spec = json.load(open(path))
    phases, cases = spec.get("phases"), spec.get("cases")
    if not phases or not isinstance(cases, dict):
        raise ValueError(f"{path}: needs a non-empty 'phases' list and a 'cases' mapping from case id to phase")
    index = {}
    for case in case_ids:
        if case not in cases:
            raise ValueError(f"{path}: case {case} has no phase (listed phases: {phases})")
        if cases[case] not in phases:
            raise ValueError(f"{path}: case {case} has phase {cases[case]!r}, not one of {phases}")
        index[case] = phases.index(cases[case])
    return index, list(phases)


def organ_phase_labels(organ_labels: torch.Tensor, sample_phase: torch.Tensor, sample_index: torch.Tensor,
                       num_phases: int) -> torch.Tensor:
    """Contrastive label of each embedding row: organ * num_phases + phase of the row's sample."""
    return organ_labels * num_phases + sample_phase[sample_index]
