"""Several labelled nnU-Net raw datasets -> one raw dataset for SACL pretraining, with organs matched by name.

Public datasets name the same organ differently (AMOS "postcava" is BTCV's "inferior vena cava") and number them
differently. The merge reads each source's ``dataset.json``, maps every label name to a canonical organ name
through a vocabulary (``organ_vocabulary.json``: TotalSegmentator v2's class names plus the synonyms of BTCV,
FLARE21/22, AMOS, WORD and AbdomenCT-1K; a user's file extends or overrides it), gives the merged organs stable
ids (the vocabulary's order), rewrites every label map voxel for voxel with those ids (no resampling) and links
the images (hard links; copies where the file system cannot link). Each source annotates only its own organs, so
which organs each case annotates is recorded next to dataset.json in ``sacl_annotated_organs.json``, and whether
any case leaves an organ out in dataset.json itself (``sacl_partial_labels``, which nnU-Net copies into
nnUNet_preprocessed, where the trainers refuse segmentation training on partial labels). A source with pseudo-labels
(``nnunet-sacl pseudo-label``) passes its record on (``sacl_pseudo_labels``: the sources' records and the numbers of
labelled and pseudo-labelled cases), so segmentation training on the merge is refused as on the source; a source's
ignore label (pseudo-label's unsure voxels) becomes the merge's ignore label, one above its organs. The sources are
only read.
"""
import difflib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.converters import resolve_raw_folder, staged_folder
from nnunet_sacl.nnunet.partial_labels import PARTIAL_KEY, PSEUDO_KEY

VOCABULARY_FILE = Path(__file__).with_name("organ_vocabulary.json")
RECORD_FILE = "sacl_annotated_organs.json"
SIDES = {"l": "left", "r": "right", "left": "left", "right": "right"}


class MergeError(ValueError):
    """A merge refused before anything was written; the message names the dataset, file or label."""


def normalize(name: str) -> str:
    """The comparison key of an organ name: lower case, '_', '-' and '/' as spaces, 'l'/'r' as left/right, the
    side words moved to the end ('Right Kidney', 'kidney_right' and 'kidney_R' give 'kidney right')."""
    words = re.sub(r"[_\-/\s]+", " ", str(name).strip().lower()).split()
    sides = [SIDES[w] for w in words if w in SIDES]
    rest = [w for w in words if w not in SIDES]
    return " ".join(rest + sides) if rest else " ".join(words)


class Vocabulary:
    """Canonical organ names in a fixed order and the names that mean them. ``lookup`` returns the canonical
    name of any spelling (or None); ``suggest`` the closest known names."""

    def __init__(self, canonical: List[str], synonyms: Dict[str, str], extra: Dict[str, str] = None):
        self.canonical = list(dict.fromkeys(canonical))
        self.extra = dict(extra or {})
        self._by_key = {normalize(c): c for c in self.canonical}
        for name, target in synonyms.items():
            if target not in self.canonical:
                raise MergeError(f"vocabulary: synonym {name!r} names {target!r}, which is not a canonical name")
            self._by_key[normalize(name)] = target

    @classmethod
    def load(cls, user_file=None) -> "Vocabulary":
        """The shipped vocabulary, extended (and where it disagrees, overridden) by ``user_file``: a JSON file with
        ``canonical`` (new organ names, appended in the given order) and/or ``synonyms`` ({name: canonical})."""
        shipped = json.loads(VOCABULARY_FILE.read_text())
        canonical = shipped["canonical"] + list(shipped.get("extra", {}))
        synonyms = dict(shipped["synonyms"])
        extra = dict(shipped.get("extra", {}))
        if user_file is not None:
            path = Path(user_file)
            try:
                user = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise MergeError(f"vocabulary file {path}: cannot read it as JSON ({err})") from None
            unknown_keys = set(user) - {"canonical", "synonyms", "about"}
            if not isinstance(user, dict) or unknown_keys:
                raise MergeError(f"vocabulary file {path}: expected a JSON object with 'canonical' (a list of names) "
                                 f"and/or 'synonyms' ({{name: canonical name}}); got keys {sorted(unknown_keys)}")
            canonical += [c for c in user.get("canonical", []) if c not in canonical]
            synonyms.update(user.get("synonyms", {}))
        return cls(canonical, synonyms, extra)

    def lookup(self, name: str) -> Optional[str]:
        return self._by_key.get(normalize(name))

    def suggest(self, name: str, n: int = 3) -> List[str]:
        # 0.6: typos and a missing side word still match ('livr' 0.89, 'kidney' 0.71); a name that merely shares
        # letters does not ('ellipsoid' and 'iliopsoas_right': 0.5)
        keys = difflib.get_close_matches(normalize(name), list(self._by_key), n=n, cutoff=0.6)
        return list(dict.fromkeys(self._by_key[k] for k in keys))

    def order(self, name: str) -> int:
        return self.canonical.index(name) if name in self.canonical else len(self.canonical)


def find_raw_dataset(raw: Path, dataset) -> Path:
    """A source given as id (17, '017') or folder name ('Dataset017_BTCV') in nnUNet_raw."""
    text = str(dataset)
    if text.isdigit():
        found = sorted(raw.glob(f"Dataset{int(text):03d}_*")) if raw.is_dir() else []
        if not found:
            raise MergeError(f"dataset {text}: no folder Dataset{int(text):03d}_* in {raw}")
        return found[0]
    folder = raw / text
    if not (folder / "dataset.json").is_file():
        raise MergeError(f"dataset {text}: {folder / 'dataset.json'} not found")
    return folder


def _source_labels(folder: Path, dataset_json: dict) -> Dict[str, int]:
    labels = dataset_json.get("labels", {})
    for name, value in labels.items():
        if not isinstance(value, int):
            raise MergeError(f"{folder.name}: label {name!r} is a region ({value}); region-based datasets cannot be "
                             f"merged by organ name")
    if labels.get("background") != 0:
        raise MergeError(f"{folder.name}: dataset.json has no 'background': 0 label")
    return {n: v for n, v in labels.items() if n not in ("background", "ignore")}


def _source_ignore(dataset_json: dict) -> Optional[int]:
    """The source's ignore label (voxels it leaves unlabelled, e.g. ``pseudo-label --threshold``'s unsure voxels),
    which the merge keeps as its own ignore label."""
    value = dataset_json.get("labels", {}).get("ignore")
    return None if value is None else int(value)


def pseudo_label_record(jsons: dict, counts: dict) -> Optional[dict]:
    """The merge's ``sacl_pseudo_labels``, when a source has pseudo-labels: its sources' records and how many cases
    are labelled and pseudo-labelled, so that segmentation training on the merge is refused as on the source, and
    a pretraining run on it can say the size of its pool."""
    pseudo = {f.name: jsons[f][PSEUDO_KEY] for f in jsons if jsons[f].get(PSEUDO_KEY)}
    if not pseudo:
        return None
    models = [r.get("model", "a model") if isinstance(r, dict) else "a model" for r in pseudo.values()]
    return {"model": "; ".join(dict.fromkeys(models)), "sources": pseudo,
            "pseudo_labelled_cases": sum(counts[f] for f in jsons if f.name in pseudo),
            "labelled_cases": sum(counts[f] for f in jsons if f.name not in pseudo)}


def _cases(folder: Path, dataset_json: dict) -> dict:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    cases = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
    channels = len(dataset_json["channel_names"])
    for case, files in cases.items():
        missing = [f for f in list(files["images"]) + [files["label"]] if not Path(f).is_file()]
        if len(files["images"]) != channels or missing:
            raise MergeError(f"{folder.name}: case {case} lacks {missing or f'{channels} image channels'}")
    if not cases:
        raise MergeError(f"{folder.name}: no training cases in {folder / 'imagesTr'}")
    return cases


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_datasets(sources: Iterable, dataset_id: int, name: str = "Merged", vocabulary=None,
                   keep_unknown: bool = False, raw_folder=None) -> Path:
    """Writes ``DatasetXXX_NAME`` into nnUNet_raw from the raw datasets ``sources`` (ids or folder names) and
    returns its folder. Names, channels and files are checked before anything is written; the merge is written
    into a hidden folder renamed at the end, so a refusal (also one found while writing, such as a label value
    that the source's dataset.json does not name) leaves nothing behind."""
    raw = resolve_raw_folder(raw_folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise MergeError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    if not 1 <= int(dataset_id) <= 999:
        raise MergeError(f"dataset id {dataset_id}: nnU-Net ids are 1..999")
    taken = sorted(p.name for p in raw.glob(f"Dataset{int(dataset_id):03d}_*")) if raw.is_dir() else []
    if taken:
        raise MergeError(f"dataset id {dataset_id} is taken in {raw} by {taken[0]}; choose another id")
    folders = [find_raw_dataset(raw, s) for s in sources]
    if len(folders) < 2 or len(set(folders)) != len(folders):
        raise MergeError(f"give at least two different datasets to merge (got {[f.name for f in folders]})")
    vocab = Vocabulary.load(vocabulary)

    jsons = {f: json.loads((f / "dataset.json").read_text()) for f in folders}
    first = folders[0]
    for key, what in (("channel_names", "channels"), ("file_ending", "file ending")):
        for f in folders[1:]:
            if jsons[f].get(key) != jsons[first].get(key):
                raise MergeError(f"{f.name}: {what} {jsons[f].get(key)} differ from {first.name}'s "
                                 f"{jsons[first].get(key)}; only datasets of the same modality and format merge")

    mapping, unknown = {}, []       # mapping: folder -> {source label name: canonical name}
    for f in folders:
        mapping[f] = {}
        for label in _source_labels(f, jsons[f]):
            canonical = vocab.lookup(label)
            if canonical is None and keep_unknown:
                canonical = normalize(label).replace(" ", "_")
            if canonical is None:
                unknown.append((f, label))
                continue
            clash = [other for other, c in mapping[f].items() if c == canonical]
            if clash:
                raise MergeError(f"{f.name}: labels {clash[0]!r} and {label!r} both mean {canonical!r}")
            mapping[f][label] = canonical
    if unknown:
        lines = [f"{f.name}: label {label!r} matches no organ name"
                 + (f" (closest: {', '.join(vocab.suggest(label))})" if vocab.suggest(label) else "")
                 for f, label in unknown]
        raise MergeError("; ".join(lines) + ". Add it to a --vocabulary file (\"synonyms\": {\"name\": \"canonical "
                                           "name\"}) or keep it as its own organ with --keep-unknown")

    organs = sorted({c for m in mapping.values() for c in m.values()}, key=lambda c: (vocab.order(c), c))
    merged_ids = {organ: i for i, organ in enumerate(organs, start=1)}
    # nnU-Net's ignore label is the highest; every source's ignore voxels keep it
    ignore = len(organs) + 1 if any(_source_ignore(jsons[f]) is not None for f in folders) else None
    cases = {f: _cases(f, jsons[f]) for f in folders}
    ending = jsons[first]["file_ending"]
    target = raw / f"Dataset{int(dataset_id):03d}_{name}"

    record = {"format": 1, "organs": organs, "sources": [], "cases": {}}
    with staged_folder(target) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        for f in folders:
            source_ids = _source_labels(f, jsons[f])
            source_ignore = _source_ignore(jsons[f])
            lut = np.zeros(max([*source_ids.values(), source_ignore or 0]) + 1, dtype=np.uint16)
            for label, value in source_ids.items():
                lut[value] = merged_ids[mapping[f][label]]
            if source_ignore is not None:
                lut[source_ignore] = ignore
            annotated = [o for o in organs if o in mapping[f].values()]
            prefix = f"{f.name.split('_')[0].replace('Dataset', 'D')}_"
            for case, files in sorted(cases[f].items()):
                merged_case = prefix + case
                for channel, image in enumerate(files["images"]):
                    _link_or_copy(image, out / "imagesTr" / f"{merged_case}_{channel:04d}{ending}")
                _remap_label(Path(files["label"]), lut, set(source_ids.values()) | ({source_ignore} - {None}),
                             out / "labelsTr" / f"{merged_case}{ending}")
                record["cases"][merged_case] = {"source": f.name, "case": case, "annotated": annotated}
            record["sources"].append({"dataset": f.name, "cases": len(cases[f]), "labels": mapping[f]})
        record["partial"] = any(set(c["annotated"]) != set(organs) for c in record["cases"].values())
        extra = {PARTIAL_KEY: record["partial"]}     # travels with dataset.json into nnUNet_preprocessed
        pseudo = pseudo_label_record(jsons, {f: len(cases[f]) for f in folders})
        if pseudo:
            extra[PSEUDO_KEY] = pseudo
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        extra.update({k: jsons[first][k] for k in ("overwrite_image_reader_writer",) if k in jsons[first]})
        labels = {"background": 0, **merged_ids, **({"ignore": ignore} if ignore else {})}
        generate_dataset_json(str(out), jsons[first]["channel_names"], labels,
                              len(record["cases"]), ending, dataset_name=target.name,
                              description=f"nnunet-sacl merge-datasets of {', '.join(f.name for f in folders)}; "
                                          f"which organs each case annotates: {RECORD_FILE}",
                              license="the licences of the source datasets apply",
                              converted_by="nnunet-sacl merge-datasets", **extra)
        (out / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return target


def _remap_label(src: Path, lut: np.ndarray, allowed: set, dst: Path) -> None:
    image = sitk.ReadImage(str(src))
    array = sitk.GetArrayFromImage(image)
    values = set(np.unique(array).tolist())
    bad = sorted(values - allowed - {0})
    if bad:
        raise MergeError(f"{src}: label values {bad} are not in its dataset.json")
    out = lut[array.astype(np.int64)]
    out = out.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)
    merged = sitk.GetImageFromArray(out)
    merged.CopyInformation(image)
    sitk.WriteImage(merged, str(dst), True)


def read_annotated_organs(dataset_folder) -> Optional[dict]:
    """The merge's record in a raw or preprocessed dataset folder ({case: [organs it annotates]} under 'cases'),
    or None for a dataset that is not a merge."""
    path = Path(dataset_folder) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None
