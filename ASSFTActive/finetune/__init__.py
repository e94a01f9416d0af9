"""Fine-tuning: supervised training on labelled volumes plus selected pseudo-labelled ones."""
