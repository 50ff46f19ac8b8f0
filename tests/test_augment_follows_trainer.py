"""The on-device augmentation follows the trainer: AugmentSettings are read from the trainer's own
get_training_transforms (behind the on-device overrides), for every stock nnU-Net augmentation variant either
reproduced or refused by name; a changed probability or range reaches the device; what cannot be reproduced is
refused with the trainer's name and the setting, before training."""
import importlib
import inspect
import json
import math
import pkgutil
from pathlib import Path

import pytest
import torch

import nnunetv2.training.nnUNetTrainer.variants.data_augmentation as da_variants
from batchgeneratorsv2.transforms.intensity.brightness import (BrightnessAdditiveTransform,
                                                               MultiplicativeBrightnessTransform)
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import OneOfTransform, RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

from nnunet_sacl.nnunet.augment_settings import NotReproducible, augment_settings_from_trainer, training_transforms
from nnunet_sacl.nnunet.device_augmentation import OnDeviceAugmentationMixin, make_augmenter
from tests.trainers.torchrun_test_trainers import SACLPretrainer_torchaug_smoke, SACLTrainer_torchaug_smoke
from tests.helpers import make_pretrainer, make_trainer

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

REPO = Path(__file__).resolve().parents[1]


def stock_variants():
    """nnUNetTrainer and every trainer class defined in nnU-Net's data_augmentation variants package (so a variant a
    future nnU-Net adds is tested too)."""
    found = {"nnUNetTrainer": nnUNetTrainer}
    for module in pkgutil.iter_modules(da_variants.__path__):
        mod = importlib.import_module(f"{da_variants.__name__}.{module.name}")
        found.update({name: cls for name, cls in inspect.getmembers(mod, inspect.isclass)
                      if issubclass(cls, nnUNetTrainer) and cls.__module__ == mod.__name__})
    return found


VARIANTS = stock_variants()

# nnU-Net 2.8.1's nnUNetTrainer.get_training_transforms, written out from its source (nnUNetTrainer.py 759-836)
STOCK = dict(p_rotation=0.2, p_scaling=0.2, scale_range=(0.7, 1.4), p_synchronize_scaling_across_axes=1.0,
             p_noise=0.1, noise_std_range=(0.0, 0.1), p_blur=0.2, p_blur_per_channel=0.5, blur_sigma_range=(0.5, 1.0),
             p_brightness=0.15, brightness_range=(0.75, 1.25), p_contrast=0.15, contrast_range=(0.75, 1.25),
             p_lowres=0.25, p_lowres_per_channel=0.5, lowres_scale_range=(0.5, 1.0), p_gamma_inverted=0.1,
             gamma_inverted_range=(0.7, 1.5), p_gamma=0.3, gamma_range=(0.7, 1.5), seg_label_outside=-1,
             seg_label_outside_becomes=0)
NO_AUGMENTATION = {k: 0.0 for k in STOCK if k.startswith("p_") and not k.endswith(("per_channel", "axes"))}

# What each stock variant changes, read from its source: a dict of settings that differ from STOCK and from what
# its configure_rotation_dummyDA_mirroring_and_inital_patch_size() returns (a function of the dimension for the
# mirror axes), or the setting named when it is refused
EXPECTED = {
    "nnUNetTrainer": {},
    "nnUNetTrainer_DASegOrd0": {},          # labels by nearest neighbour: what the device does anyway
    "nnUNetTrainer_DASegOrd0_NoMirroring": {},
    "nnUNetTrainerNoMirroring": {},
    "nnUNetTrainer_onlyMirror01": {},
    "nnUNetTrainer_onlyMirror01_1500ep": {},
    "nnUNetTrainer_onlyMirror01_DASegOrd0": {},
    "nnUNetTrainer_noDummy2DDA": {},
    "nnUNetTrainerNoDA": NO_AUGMENTATION,    # its transforms are the validation ones: RemoveLabel(-1, 0) + DS
    "nnUNetTrainerDA5": "SpatialTransform(p_rot_per_axis=0.5)",
    "nnUNetTrainerDA5_10epochs": "SpatialTransform(p_rot_per_axis=0.5)",
    "nnUNetTrainerDA5Segord0": "SpatialTransform(p_rot_per_axis=0.5)",
    "nnUNetTrainerDA5ord0": "SpatialTransform(mode_image='nearest')",
}
MIRROR_AXES = {"nnUNetTrainerNoDA": lambda d: (), "nnUNetTrainerNoMirroring": lambda d: (),
               "nnUNetTrainer_DASegOrd0_NoMirroring": lambda d: (),
               **{f"nnUNetTrainer_onlyMirror01{s}": lambda d: (0,) if d == 2 else (0, 1)
                  for s in ("", "_1500ep", "_DASegOrd0")}}


def btcv_like_trainer(cls, configuration, name=None):
    """The trainer on the shipped BTCV-like plans (no data needed): 3d_fullres is dummy 2D (48 x 192 x 192 at 3 mm),
    3d_lowres full 3D, 2d 512 x 512. With a name, cls is put behind OnDeviceAugmentationMixin under that name."""
    plans = json.loads((REPO / "plans" / "btcv_like_nnUNetPlans.json").read_text())
    dataset = json.loads((REPO / "plans" / "btcv_like_dataset.json").read_text())
    if name is not None:
        cls = type(name, (OnDeviceAugmentationMixin, cls), {})
    return cls(dict(plans, continue_training=False), configuration, 0, dataset, torch.device("cpu"))


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))


def leaves(t, p=1.0):
    """(transform, probability) of every leaf of a batchgeneratorsv2 tree: the test's own reading of it."""
    if isinstance(t, RandomTransform):
        return leaves(t.transform, p * t.apply_probability)
    if isinstance(t, ComposeTransforms):
        return [x for child in t.transforms for x in leaves(child, p)]
    return [(t, p)]


def settings_seen_in(transforms):
    """Probabilities and ranges as they stand in the transforms (absent: probability 0)."""
    found = dict(NO_AUGMENTATION, mirror_axes=())
    for t, p in leaves(transforms):
        if isinstance(t, SpatialTransform):
            found.update(p_rotation=t.p_rotation, p_scaling=t.p_scaling, scale_range=tuple(t.scaling),
                         rotation_range=tuple(t.rotation))
        elif isinstance(t, MirrorTransform):
            found["mirror_axes"] = tuple(t.allowed_axes)
        elif isinstance(t, GaussianNoiseTransform):
            found.update(p_noise=p, noise_std_range=tuple(t.noise_variance))
        elif isinstance(t, GaussianBlurTransform):
            found.update(p_blur=p, p_blur_per_channel=t.p_per_channel, blur_sigma_range=tuple(t.blur_sigma))
        elif isinstance(t, MultiplicativeBrightnessTransform):
            found.update(p_brightness=p, brightness_range=tuple(t.multiplier_range.contrast_range))
        elif isinstance(t, ContrastTransform):
            found.update(p_contrast=p, contrast_range=tuple(t.contrast_range.contrast_range))
        elif isinstance(t, SimulateLowResolutionTransform):
            found.update(p_lowres=p, p_lowres_per_channel=t.p_per_channel, lowres_scale_range=tuple(t.scale))
        elif isinstance(t, GammaTransform):
            key = "gamma_inverted" if t.p_invert_image == 1 else "gamma"
            found.update({f"p_{key}": p, f"{key}_range": tuple(t.gamma.contrast_range)})
        elif isinstance(t, RemoveLabelTransform):
            found.update(seg_label_outside=t.label_value, seg_label_outside_becomes=t.set_to)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_lowres", "2d"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stock_variant_is_followed_or_refused(name, configuration):
    """Each stock variant behind OnDeviceAugmentationMixin: refused with its name and the setting, or the settings
    equal the values in the transforms the variant itself returns (and, for the variants known when this was written,
    the values read from their source)."""
    variant = VARIANTS[name]
    plain = btcv_like_trainer(variant, configuration)
    rotation, dummy_2d, initial, mirror = plain.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    on_device = btcv_like_trainer(variant, configuration, name=name)
    expected = EXPECTED.get(name)
    try:
        settings = augment_settings_from_trainer(on_device)
    except NotReproducible as e:
        assert str(e).startswith(f"{name}: ") and "cannot reproduce" in str(e)
        assert expected is None or isinstance(expected, str), f"{name} should be reproduced: {e}"
        assert expected is None or expected in str(e)
        return
    assert not isinstance(expected, str), f"{name} should be refused ({expected})"
    seen = settings_seen_in(training_transforms(plain))
    for key, value in seen.items():
        assert getattr(settings, key) == pytest.approx(value), (key, getattr(settings, key), value)
    assert settings.dummy_2d == dummy_2d and settings.initial_patch_size == tuple(int(i) for i in initial)
    assert settings.patch_size == tuple(plain.configuration_manager.patch_size)
    if expected is not None:
        ndim = len(settings.patch_size)
        from_source = {**STOCK, "rotation_range": tuple(rotation) if expected.get("p_rotation", 1) else (0.0, 0.0),
                       "mirror_axes": MIRROR_AXES.get(name, lambda d: tuple(range(d)))(ndim), **expected}
        for key, value in from_source.items():
            assert getattr(settings, key) == pytest.approx(value), (key, getattr(settings, key), value)
    if name == "nnUNetTrainer_noDummy2DDA" and configuration == "3d_fullres":
        assert not settings.dummy_2d and settings.rotation_range[1] == pytest.approx(math.radians(30))
    if name == "nnUNetTrainerNoDA":
        assert settings.initial_patch_size == settings.patch_size


def test_every_stock_variant_is_in_the_table():
    """A variant a newer nnU-Net adds is checked generically above; this asks for its entry in EXPECTED."""
    assert set(VARIANTS) <= set(EXPECTED), sorted(set(VARIANTS) - set(EXPECTED))


# ---------------------------------------------------------------- a changed probability or range reaches the device

def changed(transforms):
    """nnU-Net's transforms with other values: noise p 0.5 and (0, 0.3), scaling p 0.35 and (0.8, 1.25), blur per
    channel 0.8, inverted gamma BGContrast((0.5, 2)), contrast removed."""
    items = transforms.transforms
    for t, _ in leaves(transforms):
        if isinstance(t, SpatialTransform):
            t.p_scaling, t.scaling = 0.35, (0.8, 1.25)
        elif isinstance(t, GaussianBlurTransform):
            t.p_per_channel = 0.8
        elif isinstance(t, GammaTransform) and t.p_invert_image == 1:
            t.gamma = BGContrast((0.5, 2.0))
    for r in items:
        if isinstance(r, RandomTransform) and isinstance(r.transform, GaussianNoiseTransform):
            r.apply_probability, r.transform.noise_variance = 0.5, (0.0, 0.3)
    transforms.transforms = [r for r in items if not (isinstance(r, RandomTransform)
                                                      and isinstance(r.transform, ContrastTransform))]
    return transforms


class ChangedDA(nnUNetTrainer):
    """A user's variant: nnU-Net's augmentation with changed values."""
    @staticmethod
    def get_training_transforms(*args, **kwargs):
        return changed(nnUNetTrainer.get_training_transforms(*args, **kwargs))


class SACLChangedDA(SACLTrainer_torchaug_smoke, ChangedDA):
    """A SACLTrainer variant with ChangedDA's augmentation, its phase 1 on the device (handed to its pretrainer)."""


CHANGED = dict(p_noise=0.5, noise_std_range=(0.0, 0.3), p_scaling=0.35, scale_range=(0.8, 1.25),
               p_blur_per_channel=0.8, gamma_inverted_range=(0.5, 2.0), p_contrast=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("trainer_class, phase_one", [
    (SACLChangedDA, True), (type("ChangedDA", (OnDeviceAugmentationMixin, ChangedDA), {}), False)],
                         ids=["SACLTrainer phase 1", "OnDeviceAugmentationMixin"])
def test_a_changed_probability_or_range_reaches_the_device(in_process_env, trainer_class, phase_one):
    trainer = (make_pretrainer if phase_one else make_trainer)(trainer_class)
    trainer.initialize()
    settings = trainer.augment_settings
    for key, value in CHANGED.items():
        assert getattr(settings, key) == pytest.approx(value), key
    # the rest stays nnU-Net's
    for key in ("p_rotation", "p_gamma", "gamma_range", "p_blur", "p_lowres", "brightness_range"):
        assert getattr(settings, key) == pytest.approx(STOCK[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_transforms_are_read_with_the_arguments_nnunet_passes(request, in_process_env, configuration):
    """What SACLTrainer's phase 1 on the device applies (its pretrainer's training_transforms) equals, attribute for
    attribute, what nnU-Net's own get_dataloaders hands to its training loader (stock trainer, same plans)."""
    def describe(x):
        if isinstance(x, (list, tuple)):
            return [describe(i) for i in x]
        if hasattr(x, "__dict__") and not callable(getattr(x, "tolist", None)):
            return type(x).__name__, {k: describe(v) for k, v in sorted(vars(x).items())
                                      if not k.startswith("_") and k != "benchmark_use_fft"}
        return repr(x.tolist() if hasattr(x, "tolist") else x)

    if configuration == "2d":
        request.getfixturevalue("preprocessed_2d")
    stock = make_trainer("nnUNetTrainer_smoke", configuration)
    stock.initialize()
    loader, _ = stock.get_dataloaders()
    sacl = make_pretrainer("SACLTrainer_torchaug_smoke", configuration=configuration)
    assert sacl.get_training_transforms(None, None, None, None, None) is None   # the CPU workers only crop
    assert describe(training_transforms(sacl)) == describe(loader.data_loader.transforms)


# ---------------------------------------------------------------- refusals

def stock_transforms_with(edit):
    class Edited(nnUNetTrainer):
        @staticmethod
        def get_training_transforms(*args, **kwargs):
            t = nnUNetTrainer.get_training_transforms(*args, **kwargs)
            t.transforms = edit(t.transforms)
            return t
    return Edited


def first(items, cls):
    return next(t for t, _ in leaves(ComposeTransforms(items)) if isinstance(t, cls))


def set_attr(cls, **values):
    def edit(items):
        for k, v in values.items():
            setattr(first(items, cls), k, v)
        return items
    return edit


def batchgenerators_v1(*args, **kwargs):
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform as V1Noise
    return Compose([V1Noise()])


REFUSED = {
    "elastic deformation": (set_attr(SpatialTransform, p_elastic_deform=0.2), "SpatialTransform(p_elastic_deform=0.2)"),
    "callable range": (set_attr(GaussianNoiseTransform, noise_variance=lambda *a, **k: 0.05),
                       "GaussianNoiseTransform(noise_variance=<function"),
    "uniform instead of BGContrast": (set_attr(ContrastTransform, contrast_range=(0.75, 1.25)),
                                      "ContrastTransform(contrast_range=(0.75, 1.25))"),
    "gamma per channel": (set_attr(GammaTransform, p_per_channel=0.5), "GammaTransform(p_per_channel=0.5)"),
    "blur synchronised axes": (set_attr(GaussianBlurTransform, synchronize_axes=True),
                               "GaussianBlurTransform(synchronize_axes=True)"),
    "unknown transform": (lambda items: items + [RandomTransform(BrightnessAdditiveTransform(0, 0.5), 0.1)],
                          "batchgeneratorsv2.transforms.intensity.brightness.BrightnessAdditiveTransform"),
    "one of": (lambda items: items + [OneOfTransform([MirrorTransform((0,)), MirrorTransform((1,))])],
               "OneOfTransform"),
    "mirroring sometimes": (lambda items: [RandomTransform(t, 0.5) if isinstance(t, MirrorTransform) else t
                                           for t in items], "RandomTransform(MirrorTransform, apply_probability=0.5)"),
    "gamma before noise": (lambda items: items[:1] + items[-4:-3] + items[1:-4] + items[-3:], "gamma before noise"),
    "no RemoveLabelTransform": (lambda items: [t for t in items if not isinstance(t, RemoveLabelTransform)],
                                "label -1 outside the image"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_device_cannot_reproduce_is_refused_with_name_and_setting(case):
    edit, setting = REFUSED[case]
    trainer = btcv_like_trainer(stock_transforms_with(edit), "3d_lowres", name="MyTrainer")
    with pytest.raises(NotReproducible) as e:
        augment_settings_from_trainer(trainer)
    assert str(e.value).startswith("MyTrainer: ") and setting in str(e.value), str(e.value)
    assert "pretrain_augmentation = 'nnunet'" in str(e.value)


def test_batchgenerators_v1_transforms_are_refused():
    trainer = btcv_like_trainer(type("V1", (nnUNetTrainer,), {"get_training_transforms":
                                                              staticmethod(batchgenerators_v1)}), "2d", name="V1")
    with pytest.raises(NotReproducible, match=r"^V1: .*batchgenerators\.transforms\.abstract_transforms\.Compose "
                                              r"\(a batchgenerators v1 transform"):
        augment_settings_from_trainer(trainer)


def test_an_override_in_front_of_the_on_device_one_is_refused():
    """It would run on the CPU workers and again on the device: refused for OnDeviceAugmentationMixin and for a
    SACLPretrainer on the device alike (a SACLTrainer variant's own get_training_transforms is its augmentation, which
    its pretrainer is handed: test_a_changed_probability_or_range_reaches_the_device)."""
    from nnunet_sacl.nnunet.variants import nnUNetTrainer_torchaug

    class InFront(nnUNetTrainer_torchaug):
        get_training_transforms = staticmethod(ChangedDA.get_training_transforms)

    class PretrainerInFront(SACLPretrainer_torchaug_smoke):
        get_training_transforms = staticmethod(ChangedDA.get_training_transforms)

    for cls in (InFront, PretrainerInFront):
        trainer = btcv_like_trainer(cls, "3d_lowres")
        with pytest.raises(NotReproducible, match=rf"^{cls.__name__}: its get_training_transforms returns transforms "
                                                  r"although its batches are augmented on the device"):
            make_augmenter(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("trainer_class, name", [
    (type("SACLTrainerDA5", (SACLTrainer_torchaug_smoke, nnUNetTrainerDA5), {}),
     r"SACLTrainerDA5 \(phase 1, SACLPretrainer_torchaug_smoke\)"),
    (type("nnUNetTrainerDA5", (OnDeviceAugmentationMixin, nnUNetTrainerDA5), {}), "nnUNetTrainerDA5")],
                         ids=["SACLTrainer", "mixin"])
def test_refused_at_initialize_before_training(in_process_env, trainer_class, name):
    trainer = (make_pretrainer if issubclass(trainer_class, SACLTrainer_torchaug_smoke) else make_trainer)(trainer_class)
    with pytest.raises(NotReproducible, match=rf"^{name}: .*SpatialTransform\(p_rot_per_axis=0.5\)"):
        trainer.initialize()
