"""AugmentSettings read from an nnU-Net trainer's own augmentation, for the on-device path (method/augment.py).

nnU-Net builds its training augmentation in ``get_training_transforms(...)`` (batchgeneratorsv2 transforms applied
to one sample at a time by CPU workers). ``augment_settings_from_trainer`` calls it (or, for a trainer whose CPU
workers only crop, its ``augmentation_transforms``) as nnU-Net's ``get_dataloaders`` calls it, walks the transform tree it returns and takes every probability and range from it, so a
variant that changes the augmentation (nnUNetTrainerNoDA, nnUNetTrainerNoMirroring, a user's override) is followed.
Whatever the device cannot reproduce (an unknown transform, elastic deformation, a parameter drawn by a callable,
another per-channel scheme, ...) is refused with the trainer's name and the transform's setting.

The on-device trainers (``OnDeviceAugmentationMixin``, SACLPretrainer on the device) return None from
get_training_transforms (their CPU workers only crop) and give the transforms the device applies from
``augmentation_transforms``.
"""
import numbers

from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform

from nnunet_sacl.method.augment import AugmentSettings

# the order in which augment_batch applies them (nnU-Net's)
_ORDER = ("spatial", "noise", "blur", "brightness", "contrast", "lowres", "gamma_inverted", "gamma")
_REMEDY = ("Train with nnU-Net's CPU augmentation instead (SACL trainers: pretrain_augmentation = 'nnunet'; other "
           "trainers: without OnDeviceAugmentationMixin).")


class NotReproducible(RuntimeError):
    """The trainer's augmentation has something the on-device path cannot do."""


def trainer_label(trainer) -> str:
    """The trainer as a refusal names it: a SACLTrainer's phase 1 by the variant the user trains."""
    handed = getattr(trainer, "handed", None)
    name = type(trainer).__name__
    return f"{handed.trainer_name} (phase 1, {name})" if handed is not None else name


def transform_arguments(trainer, spatial) -> tuple:
    """(args, kwargs) with which ``nnUNetTrainer.get_dataloaders`` calls ``get_training_transforms``; ``spatial``:
    what ``configure_rotation_dummyDA_mirroring_and_inital_patch_size()`` returned."""
    rotation, dummy_2d, _, mirror_axes = spatial
    lm = trainer.label_manager
    return ((trainer.configuration_manager.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes,
             dummy_2d),
            dict(use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
                 foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
                 ignore_label=lm.ignore_label))


def augmentation_of(trainer) -> tuple:
    """(spatial settings, transforms) of the trainer's training augmentation, wherever it runs: the transforms its
    ``augmentation_transforms`` gives (the on-device trainers, whose CPU workers only crop, and SACLPretrainer), else
    those its ``get_training_transforms`` gives nnU-Net's CPU workers, called as nnU-Net's get_dataloaders calls it."""
    spatial = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    args, kwargs = transform_arguments(trainer, spatial)
    transforms = getattr(trainer, "augmentation_transforms", trainer.get_training_transforms)
    return spatial, transforms(*args, **kwargs)


def training_transforms(trainer):
    """The transforms of the trainer's training augmentation (``augmentation_of``)."""
    return augmentation_of(trainer)[1]


def refuse_augmentation_on_the_cpu(trainer) -> None:
    """An on-device trainer's CPU workers must only crop: refused when its get_training_transforms, called as nnU-Net
    calls it, returns transforms (a get_training_transforms defined in front of the on-device one), since nnU-Net's
    workers would apply them and the device again."""
    spatial = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    args, kwargs = transform_arguments(trainer, spatial)
    if trainer.get_training_transforms(*args, **kwargs) is not None:
        raise NotReproducible(
            f"{trainer_label(trainer)}: its get_training_transforms returns transforms although its batches are "
            f"augmented on the device, so nnU-Net's CPU workers would apply them and the device again: a "
            f"get_training_transforms comes before the on-device one (OnDeviceAugmentationMixin, SACLPretrainer). "
            f"Define it in a base class listed after that one.")


def augment_settings_from_trainer(trainer, physical_rotation: bool = True) -> AugmentSettings:
    """Settings for augment_batch from the trainer: every probability and range from its training transforms
    (``training_transforms``), initial patch size and dummy 2D from its
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size()``, patch size and spacing from its configuration
    manager. ``physical_rotation=False`` rotates in voxel units as nnU-Net does (spacing None). Raises
    NotReproducible, naming the trainer and the setting, for augmentation the device cannot reproduce."""
    spatial, transforms = augmentation_of(trainer)
    _, dummy_2d, initial_patch_size, _ = spatial
    patch_size = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    initial_patch_size = tuple(int(p) for p in initial_patch_size)
    reader = _Reader(trainer_label(trainer), patch_size, bool(dummy_2d), trainer._get_deep_supervision_scales())
    reader.read(transforms)
    if "spatial" not in reader.slots and initial_patch_size != patch_size:
        raise NotReproducible(f"{reader.name}: its training transforms have no SpatialTransform, so nnU-Net would "
                              f"train on the loader's {initial_patch_size} crops; the device crops them to the patch "
                              f"size {patch_size}. {_REMEDY}")
    spacing = tuple(float(s) for s in trainer.configuration_manager.spacing) if physical_rotation else None
    try:
        return AugmentSettings(ndim=len(patch_size), dummy_2d=bool(dummy_2d), spacing=spacing, patch_size=patch_size,
                               initial_patch_size=initial_patch_size, **reader.fields)
    except ValueError as e:
        raise NotReproducible(f"{reader.name}: {e}") from None


class _Reader:
    """Walks a batchgeneratorsv2 transform tree in pipeline order and collects AugmentSettings fields; a transform
    that is absent (or has probability 0) gives probability 0."""

    def __init__(self, name, patch_size, dummy_2d, deep_supervision_scales):
        self.name, self.patch_size, self.dummy_2d = name, patch_size, dummy_2d
        self.deep_supervision_scales = deep_supervision_scales
        self.fields = dict(rotation_range=(0.0, 0.0), p_rotation=0.0, p_scaling=0.0, mirror_axes=(), p_noise=0.0,
                           p_blur=0.0, p_brightness=0.0, p_contrast=0.0, p_lowres=0.0, p_gamma_inverted=0.0,
                           p_gamma=0.0, seg_label_outside=None)
        self.slots = []            # what was found, in pipeline order
        self.in_2d = False         # between Convert3DTo2DTransform and Convert2DTo3DTransform
        self.spatial_in_2d = None
        self.seg_padding = None    # label SpatialTransform puts outside the input patch

    # ------------------------------------------------------------------------------------------ refusals
    def refuse(self, what, why):
        raise NotReproducible(f"{self.name}: its training transforms have {what}, which the on-device augmentation "
                              f"cannot reproduce ({why}). {_REMEDY}")

    def require(self, t, attr, allowed, why):
        value = getattr(t, attr)
        if value not in allowed:
            self.refuse(f"{type(t).__name__}({attr}={value!r})", why)

    def range(self, t, attr):
        """A uniform RandomScalar as (low, high): a number x is (x, x); a callable cannot be batched."""
        value = getattr(t, attr)
        if isinstance(value, numbers.Real):
            return float(value), float(value)
        if callable(value) or not hasattr(value, "__len__") or len(value) != 2 \
                or not all(isinstance(v, numbers.Real) for v in value) or value[0] > value[1]:
            self.refuse(f"{type(t).__name__}({attr}={value!r})", "the device draws uniformly from a (low, high) "
                                                                 "pair or uses a constant; not from a callable")
        return float(value[0]), float(value[1])

    def bg_range(self, t, attr):
        """BGContrast((low, high)) as (low, high): the device draws batchgeneratorsv2's BGContrast only."""
        value = getattr(t, attr)
        if type(value) is not BGContrast:
            self.refuse(f"{type(t).__name__}({attr}={value!r})", "the device draws these factors as "
                                                                 "BGContrast((low, high)) only")
        return self.range(value, "contrast_range")

    # ------------------------------------------------------------------------------------------ the walk
    def flatten(self, t, p=1.0):
        """(transform, probability that a sample gets it) for every leaf, in pipeline order."""
        if type(t) is RandomTransform:
            if not isinstance(t.apply_probability, numbers.Real) or not 0 <= t.apply_probability <= 1:
                self.refuse(f"RandomTransform(apply_probability={t.apply_probability!r})", "not a probability")
            yield from self.flatten(t.transform, p * t.apply_probability)
        elif type(t) is ComposeTransforms:
            if p not in (0, 1) and len(t.transforms) > 1:
                self.refuse(f"RandomTransform(ComposeTransforms([...]), apply_probability={p})",
                            "several transforms applied or skipped together")
            for child in t.transforms:
                yield from self.flatten(child, p)
        elif p > 0:
            yield t, float(p)

    def read(self, transforms):
        handlers = {SpatialTransform: self.spatial, MirrorTransform: self.mirror, GaussianNoiseTransform: self.noise,
                    GaussianBlurTransform: self.blur, MultiplicativeBrightnessTransform: self.brightness,
                    ContrastTransform: self.contrast, SimulateLowResolutionTransform: self.lowres,
                    GammaTransform: self.gamma, RemoveLabelTransform: self.remove_label,
                    DownsampleSegForDSTransform: self.deep_supervision,
                    Convert3DTo2DTransform: self.to_2d, Convert2DTo3DTransform: self.to_3d}
        if transforms is None:
            self.refuse("get_training_transforms returning None", "there are no transforms to read")
        for t, p in self.flatten(transforms):
            handler = handlers.get(type(t))   # exact types: a subclass may behave differently
            if handler is None:
                cls = type(t)
                v1 = " (a batchgenerators v1 transform; the device reads batchgeneratorsv2's)" \
                    if cls.__module__.split(".")[0] == "batchgenerators" else ""
                self.refuse(f"{cls.__module__}.{cls.__qualname__}{v1}", "no on-device counterpart")
            if self.in_2d and type(t) not in (SpatialTransform, Convert2DTo3DTransform):
                self.refuse(f"{type(t).__name__} on the pseudo-2D data of Convert3DTo2DTransform",
                            "only SpatialTransform runs between Convert3DTo2D and Convert2DTo3D")
            handler(t, p)
        if self.in_2d:
            self.refuse("Convert3DTo2DTransform without Convert2DTo3DTransform", "the batch must end up 3D")
        self.check_order()
        self.check_outside_label()

    def take(self, slot, t):
        if slot in self.slots:
            self.refuse(f"a second {type(t).__name__} ({slot})", "the device applies each transform once")
        self.slots.append(slot)

    def always(self, t, p):
        if p != 1:
            self.refuse(f"RandomTransform({type(t).__name__}, apply_probability={p})",
                        f"the device applies {type(t).__name__} to every sample")

    def check_order(self):
        found = [s for s in self.slots if s in _ORDER]
        for a, b in zip(found, found[1:]):
            if _ORDER.index(a) > _ORDER.index(b):
                self.refuse(f"{a} before {b}", f"the device applies them in nnU-Net's order: {', '.join(_ORDER)}")
        for later, earlier in (("remove_label", "spatial"), ("deep_supervision", "spatial"),
                               ("deep_supervision", "remove_label")):
            if later in self.slots and earlier in self.slots and self.slots.index(later) < self.slots.index(earlier):
                self.refuse(f"{later} before {earlier}", f"the device does {earlier} first")

    def check_outside_label(self):
        """Label outside the input patch: nnU-Net's is SpatialTransform's padding label after RemoveLabelTransform;
        the device pads with 0, then replaces seg_label_outside (the loader's padding)."""
        if self.seg_padding is None:
            return
        old, new = self.fields["seg_label_outside"], self.fields.get("seg_label_outside_becomes", 0)
        nnunet = new if self.seg_padding == old else self.seg_padding
        device = new if old == 0 else 0
        if nnunet != device:
            self.refuse(f"label {nnunet} outside the image after SpatialTransform (padding {self.seg_padding}, "
                        f"RemoveLabelTransform {old} -> {new})", f"the device gives {device} there")

    # ------------------------------------------------------------------------------------------ transforms
    def to_2d(self, t, p):
        self.always(t, p)
        self.in_2d = True

    def to_3d(self, t, p):
        self.always(t, p)
        if not self.in_2d:
            self.refuse("Convert2DTo3DTransform without Convert3DTo2DTransform", "the batch is 3D already")
        self.in_2d = False

    def spatial(self, t, p):
        self.always(t, p)
        self.take("spatial", t)
        if self.in_2d != self.dummy_2d:
            self.refuse(f"SpatialTransform {'inside' if self.in_2d else 'outside'} Convert3DTo2D/Convert2DTo3D",
                        f"configure_rotation_dummyDA_mirroring_and_inital_patch_size returned "
                        f"do_dummy_2d_data_aug={self.dummy_2d}")
        expected = self.patch_size[1:] if self.dummy_2d else self.patch_size
        if tuple(int(s) for s in t.patch_size) != expected:
            self.refuse(f"SpatialTransform(patch_size={t.patch_size!r})", f"the device outputs the configuration's "
                                                                          f"patch size {self.patch_size}")
        self.require(t, "random_crop", (False,), "the device takes the centre crop")
        self.require(t, "p_elastic_deform", (0,), "no elastic deformation on the device")
        self.require(t, "bg_style_seg_sampling", (False,), "labels are sampled by nearest neighbour")
        self.require(t, "mode_image", ("bilinear",), "images are sampled linearly")
        self.require(t, "mode_seg", ("bilinear", "nearest"), "labels are sampled by nearest neighbour; nnU-Net's "
                                                             "linear one-hot sampling differs only on boundaries")
        self.require(t, "align_corners", (False,), "the device samples with align_corners=False")
        if t.padding_mode_image == "constant":
            self.require(t, "padding_value_image", (0,), "the device pads images with 0")
        else:
            self.require(t, "padding_mode_image", ("zeros", "constant"), "the device pads images with 0")
        self.require(t, "border_mode_seg", ("zeros", "constant"), "the device pads labels with a constant")
        self.seg_padding = t.padding_value_seg if t.border_mode_seg == "constant" else 0
        f = self.fields
        f["p_rotation"], f["p_scaling"] = float(t.p_rotation), float(t.p_scaling)
        if t.p_rotation > 0:
            self.require(t, "p_rot_per_axis", (1,), "the device draws every rotation angle")
            f["rotation_range"] = self.range(t, "rotation")
        if t.p_scaling > 0:
            f["scale_range"] = self.range(t, "scaling")
            f["p_synchronize_scaling_across_axes"] = float(t.p_synchronize_scaling_across_axes)

    def mirror(self, t, p):
        self.always(t, p)
        self.take("mirror", t)
        self.fields["mirror_axes"] = tuple(int(a) for a in t.allowed_axes)

    def noise(self, t, p):
        self.take("noise", t)
        self.require(t, "synchronize_channels", (True,), "one noise level per sample, shared by its channels")
        self.require(t, "p_per_channel", (1,), "noise on every channel of a sample")
        self.fields.update(p_noise=p, noise_std_range=self.range(t, "noise_variance"))

    def blur(self, t, p):
        self.take("blur", t)
        self.require(t, "synchronize_channels", (False,), "one sigma per channel")
        self.require(t, "synchronize_axes", (False,), "one sigma per axis")
        self.fields.update(p_blur=p, p_blur_per_channel=float(t.p_per_channel),
                           blur_sigma_range=self.range(t, "blur_sigma"))

    def brightness(self, t, p):
        self.take("brightness", t)
        self.require(t, "synchronize_channels", (False,), "one factor per channel")
        self.require(t, "p_per_channel", (1,), "every channel of a sample")
        self.fields.update(p_brightness=p, brightness_range=self.bg_range(t, "multiplier_range"))

    def contrast(self, t, p):
        self.take("contrast", t)
        self.require(t, "preserve_range", (True,), "the result is clipped to the channel's range")
        self.require(t, "synchronize_channels", (False,), "one factor per channel")
        self.require(t, "p_per_channel", (1,), "every channel of a sample")
        self.fields.update(p_contrast=p, contrast_range=self.bg_range(t, "contrast_range"))

    def lowres(self, t, p):
        self.take("lowres", t)
        self.require(t, "synchronize_channels", (False,), "one factor per channel")
        self.require(t, "synchronize_axes", (True,), "one factor for all axes")
        self.require(t, "allowed_channels", (None,), "every channel may get it")
        ignore = tuple(t.ignore_axes or ())
        if ignore != ((0,) if self.dummy_2d else ()):
            self.refuse(f"SimulateLowResolutionTransform(ignore_axes={t.ignore_axes!r})",
                        f"the device ignores axis 0 exactly when dummy 2D is on (here {self.dummy_2d})")
        self.fields.update(p_lowres=p, p_lowres_per_channel=float(t.p_per_channel),
                           lowres_scale_range=self.range(t, "scale"))

    def gamma(self, t, p):
        self.require(t, "p_invert_image", (0, 1), "the device has one inverted and one plain gamma transform")
        inverted = t.p_invert_image == 1
        self.take("gamma_inverted" if inverted else "gamma", t)
        self.require(t, "p_retain_stats", (1,), "mean and std are retained")
        self.require(t, "synchronize_channels", (False,), "one gamma per channel")
        self.require(t, "p_per_channel", (1,), "every channel of a sample")
        if inverted:
            self.fields.update(p_gamma_inverted=p, gamma_inverted_range=self.bg_range(t, "gamma"))
        else:
            self.fields.update(p_gamma=p, gamma_range=self.bg_range(t, "gamma"))

    def remove_label(self, t, p):
        self.always(t, p)
        self.take("remove_label", t)
        self.require(t, "segmentation_channels", (None,), "every label channel")
        self.fields.update(seg_label_outside=int(t.label_value), seg_label_outside_becomes=int(t.set_to))

    def deep_supervision(self, t, p):
        self.always(t, p)
        self.take("deep_supervision", t)
        expected = self.deep_supervision_scales
        if _floats(t.ds_scales) != _floats(expected):
            self.refuse(f"DownsampleSegForDSTransform(ds_scales={t.ds_scales!r})",
                        f"the device downsamples the targets to the trainer's deep supervision scales {expected!r}")


def _floats(scales):
    """Deep supervision scales as nested lists of floats (nnU-Net's are lists of numpy floats), for comparison."""
    return None if scales is None else [[float(x) for x in s] if hasattr(s, "__len__") else float(s) for s in scales]
