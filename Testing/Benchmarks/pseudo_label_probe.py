"""Why do ASSFT's pseudo-labels lower target-test Dice? One fixed labelled set, the second stage varied.

Reproduces the diagnosis behind RESULTS.md ("Why the selective pseudo-labels hurt"). On the development split of
the annotation-efficiency benchmark (target pool cases 36..71, target test cases 20..39; disjoint from the quick
profile's pool and test), with the scanner shift of the benchmark and 8 labelled volumes (random query, seed 2):

1. stage 1: the pre-trained model is fine-tuned on the 8 labelled volumes (the teacher);
2. the teacher pseudo-labels the rest of the pool and ``finetune.pseudo.select_reliable`` keeps half of it;
3. stage 2 is run from the teacher in several ways, each evaluated on the test cases:
   ``none`` (labelled only), ``selective`` (the product), ``oracle`` (the kept volumes with their *true* labels: is
   the pipeline sound?), ``weight 0.3`` (lower pseudo-loss weight), ``rim r=3`` (the rejected prototype that ignores
   the predicted-background rim).

It also prints, for the first kept volumes, how many foreground voxels the teacher, the ``selective`` student and the
truth have: the teacher under-segments under the shift and the student trained on its labels shrinks further.

Usage (about 3 minutes on 2 CPU cores; ``--long`` uses 200 + 200 steps, about 6 minutes):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/pseudo_label_probe.py [--long]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for entry in (str(HERE.parents[1]), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import ae_tasks  # noqa: E402

#: Random query, seed 2, budget 8 on the development pool (see results/history/*dev_base.json).
LABELED = ("hippocampus_252", "hippocampus_292", "hippocampus_286", "hippocampus_316", "hippocampus_319",
           "hippocampus_180", "hippocampus_289", "hippocampus_195")


def main() -> None:
    import torch

    from ASSFTActive.evaluate import dice_per_class
    from ASSFTActive.finetune.config import PseudoLabelConfig, TrainConfig
    from ASSFTActive.finetune.pseudo import PseudoCandidate, foreground_confidence, select_reliable, semantic_distance
    from ASSFTActive.finetune.training import SupervisedCase, train_supervised
    from ASSFTActive.inference import Predictor
    from ASSFTActive.io import case_id
    from ASSFTActive.models import LoadedModel, LoadReport
    from ASSFTActive.shifts import ShiftConfig
    from ASSFTActive.splits import read_reserved, split_cases

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data" / "hippocampus")
    parser.add_argument("--long", action="store_true", help="200 + 200 steps instead of 60 + 60")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 200 if args.long else 60
    split = split_cases([case_id(p) for p in sorted((args.data / "imagesTr").glob("*.nii.gz"))],
                        read_reserved(args.data / "reserved.txt"))
    pool, test = split.target_pool[36:72], split.target_test[20:40]
    train = TrainConfig(iterations=steps, patch_size=(32, 48, 32), batch_size=4, seed=0)
    ae_tasks.init_worker(ae_tasks.Setup(data=str(args.data), pool=tuple(pool), test=tuple(test),
                                        shift=ShiftConfig("scanner", 0.7, 0).to_dict(), train=train.to_dict(),
                                        semi_iterations=steps, pseudo={}, trainer="direct"))
    card = ae_tasks.default_card()

    def report(tag: str, network) -> None:
        result = ae_tasks.evaluate(network)
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in result["per_class"].items())
        print(f"{tag:<34} test Dice {result['mean_dice']:.3f} ({per_class})", flush=True)

    start = time.perf_counter()
    labeled = ae_tasks._supervised_cases(LABELED)
    network = ae_tasks.fresh_network()
    train_supervised(network, card, labeled, train)
    report(f"teacher ({steps} steps)", network)
    teacher_state = {k: v.clone() for k, v in network.state_dict().items()}
    teacher = Predictor(LoadedModel(card, network, LoadReport(0, (), ())))
    references = [teacher.predict(c.image).features[-1] for c in labeled]
    candidates, hard = [], {}
    for case in pool:
        if case in LABELED:
            continue
        prediction = teacher.predict(ae_tasks.shifted_case(case)[0])
        candidates.append(PseudoCandidate(case, foreground_confidence(prediction.probs),
                                          semantic_distance(prediction.features[-1], references)))
        hard[case] = prediction.label
    kept = [d.case_id for d in select_reliable(candidates, PseudoLabelConfig()) if d.kept]
    truth = {c: np.asarray(ae_tasks.shifted_case(c)[1].array) for c in kept}
    quality = np.mean([np.mean(dice_per_class(hard[c], truth[c], 3)) for c in kept])
    print(f"{len(kept)} pseudo-labelled volumes kept; their Dice against the hidden labels: {quality:.3f}")

    def stage2(tag: str, labels=None, weight: float = 1.0, rim: int = 0, none: bool = False):
        student = ae_tasks.fresh_network()
        student.load_state_dict(teacher_state)
        pseudo = []
        if not none:
            for c in kept:
                image = ae_tasks.shifted_case(c)[0]
                array = labels[c] if labels is not None else hard[c]
                mask = ae_tasks.boundary_band_mask(hard[c], rim) if rim else None
                pseudo.append(SupervisedCase(c, image, image.with_array(array), mask))
        train_supervised(student, card, labeled, replace(train, seed=1, pseudo_weight=weight), pseudo=pseudo)
        report(tag, student)
        return student

    stage2("stage 2: none (labelled only)", none=True)
    student = stage2("stage 2: selective (product)")
    stage2("stage 2: oracle (true labels)", labels=truth)
    stage2("stage 2: selective, weight 0.3", weight=0.3)
    stage2("stage 2: selective, rim r=3 ignored", rim=3)
    predictor = Predictor(LoadedModel(card, student, LoadReport(0, (), ())))
    print("foreground voxels (teacher pseudo-label / selective student / truth) on kept volumes:")
    for c in kept[:6]:
        mine = predictor.predict(ae_tasks.shifted_case(c)[0]).label
        print(f"  {c}: {(hard[c] > 0).sum()} / {(mine > 0).sum()} / {(truth[c] > 0).sum()}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
