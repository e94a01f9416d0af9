"""SFR and SFR+ (Stitching, Fine-tuning, Re-training): a 2D SAM fine-tuned on stitched 3D volumes as a teacher.

What exists so far: ``stitching`` (a volume's slices tiled on one square canvas and the exact inverse), ``sam``
(a SAM written here with the parameter names of Meta's segment-anything, so that user-supplied official weights
load; LoRA on the image encoder's q/v), ``inputs`` (how volumes enter SAM), ``finetune`` (stage 2: SAM fine-tuned on
stitched labelled volumes), ``pseudo`` (un-stitched 3D pseudo-labels of a pool, the SFR+ volume confidence and
selection), ``plus`` (SFR+: select confident pseudo-labelled volumes, fine-tune SAM again) and ``prior`` (the
embedded small SAM-architecture prior, which is not Meta's SAM), ``retrain`` (stage 3: Mean-Teacher re-training of
the 3D model as a loss term of the shared trainer of ``finetune/``), ``config`` (every setting, torch-free) and
``pipeline`` (:class:`~.pipeline.Sfr`, the adaptation method behind ``assft sfr``, which the shared spine
:func:`ASSFTActive.finetune.adapt.run_adaptation` runs with Adapt Model's guard and store). Nothing heavy is
imported here.

References:
    Li, Qi, Yu, Huo, Shi, Gao, "Stitching, Fine-tuning, Re-training: A SAM-enabled Framework for Semi-supervised 3D
    Medical Image Segmentation", arXiv:2403.11229, IEEE TMI 44(10), 2025; ``shared/research/method-spec.md`` §2.
"""
