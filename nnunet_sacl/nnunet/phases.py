"""The phase a SACL trainer runs, and methods that act in one phase only.

A trainer's ``phase`` is ``SEGMENTATION`` (nnU-Net's training: SACLTrainer's phase 2, the joint trainer, any stock
trainer) or ``PRETRAINING`` (SACL's phase 1: every SACLPretrainer, and the instance of a SACLTrainer (variant) that
runs its phase 1; ``SACLTrainer.make_pretrainer`` builds that instance from the trainer's own class). One class thus
runs both phases of a SACLTrainer variant, its run length, augmentation and settings included, and each of its
methods that belongs to one phase says so with ``only_in``: in the other phase the next class's method runs, as if
the method were not there. Nothing is switched off or undone for a phase.
"""
import functools

PRETRAINING = "pretraining"
SEGMENTATION = "segmentation"


def phase_of(trainer_or_class) -> str:
    """The phase a trainer (or a trainer class, by its class attribute) runs; nnU-Net's own trainers segment."""
    return getattr(trainer_or_class, "phase", SEGMENTATION)


def only_in(phase: str):
    """Decorates a trainer method that acts in ``phase`` only; in the other phase the method of the next class in the
    trainer's MRO runs instead (the class that defines the decorated method is found in the MRO at the call)."""
    if phase not in (PRETRAINING, SEGMENTATION):
        raise ValueError(f"phase {phase!r}: use {PRETRAINING!r} or {SEGMENTATION!r}")

    def decorate(method):
        name = method.__name__

        @functools.wraps(method)
        def in_its_phase(self, *args, **kwargs):
            if phase_of(self) == phase:
                return method(self, *args, **kwargs)
            owner = next(cls for cls in type(self).__mro__ if vars(cls).get(name) is in_its_phase)
            return getattr(super(owner, self), name)(*args, **kwargs)

        in_its_phase.phase = phase
        return in_its_phase

    return decorate
