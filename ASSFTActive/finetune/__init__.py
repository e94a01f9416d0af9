"""Fine-tuning: supervised training on labelled volumes plus selected pseudo-labelled ones, behind a guard.

``config`` (settings, torch-free), ``pseudo`` (the selection, numpy only) and ``guard`` (the activation decision,
numpy only) can be imported alone; ``semi`` (teacher-student parts), ``training`` (the patch trainer) and ``adapt``
(the whole adaptation run: :func:`~ASSFTActive.finetune.adapt.adapt_model`) load torch. Nothing heavy is imported
here, so the job protocol can read the settings without torch.
"""
