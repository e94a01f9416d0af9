"""Fine-tuning: supervised training on labelled volumes plus selected pseudo-labelled ones.

``config`` (settings, torch-free) and ``pseudo`` (the selection, numpy only) can be imported alone; ``training``
(the patch trainer) and ``adapt`` (the whole adaptation run: :func:`~ASSFTActive.finetune.adapt.adapt_model`) load
torch. Nothing heavy is imported here, so the job protocol can read the settings without torch.
"""
