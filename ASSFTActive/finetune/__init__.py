"""Fine-tuning: supervised training on labelled volumes plus selected pseudo-labelled ones, behind a guard.

Torch-free, importable alone: ``config`` (settings), ``pseudo`` (the selection, numpy only) and ``guard`` (the
activation decision, numpy only). With torch, by job: ``adapt`` (:func:`~ASSFTActive.finetune.adapt.adapt_model`,
a short list of steps), ``state`` (the run state and its inputs), ``checkpoints`` (the resumable state as typed
records), ``recipe`` (supervised stage then semi-supervised rounds), ``pseudo_round`` (one self-training round),
``cross_validation`` (the guard's folds and pool check), ``semi`` (teacher-student parts) and ``training`` (the patch
trainer). Nothing heavy is imported here, so the job protocol can read the settings without torch.
"""
