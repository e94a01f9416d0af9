"""Fine-tuning: supervised training on labelled volumes plus selected pseudo-labelled ones, behind a guard.

Torch-free, importable alone: ``config`` (settings), ``pseudo`` (the selection, numpy only), ``guard`` (the
activation decision, numpy only), ``fold_pseudo`` (what the folds pseudo-labelled) and ``method`` (what an
adaptation method supplies). With torch, by job: ``adapt``
(:func:`~ASSFTActive.finetune.adapt.run_adaptation`, the one adaptation spine: a short list of steps for every
method), ``assft`` (ASSFT's method), ``state`` (the run state and its inputs), ``checkpoints`` (the resumable state
as typed records), ``recipe`` (supervised stage then semi-supervised rounds), ``pseudo_round`` (one self-training
round, its pseudo-labeller), ``cross_validation`` (the guard's folds and pool check), ``semi`` (teacher-student
parts) and ``training`` (the patch trainer, its loss terms and hooks). Nothing heavy is imported here, so the job
protocol can read the settings without torch.
"""
