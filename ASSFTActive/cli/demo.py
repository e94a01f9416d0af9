"""``assft demo``: one whole round on the shipped sample "new site", with the embedded default model.

1. **Rank** the sample pool (12 hippocampus MRIs under a simulated scanner shift) by DKD and ASD; write the
   ranking, entropy overlays and high-entropy regions.
2. **Annotate**: the shipped labels of the proposed volumes stand in for the annotator's work.
3. **Adapt** the model on them plus selectively pseudo-labelled pool volumes; a new version in the model store.
4. **Evaluate** before and after on the 6 held-out sample volumes (Dice and HD95 per class).
5. **Re-rank** the rest of the pool with the adapted model (DKD now sees how far the encoder moved).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..finetune.config import PseudoMode
from ..query.config import Strategy
from .common import ProgressBar, add_device_argument, resolve_device
from .rank import STRATEGIES, format_ranking

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a whole round (rank, annotate, adapt, evaluate) on the shipped sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--budget", type=int, default=3, help="volumes to annotate (default 3)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=Strategy.ASSFT.value)
    parser.add_argument("--iterations", type=int, help="training steps per stage (default: Adapt Model's)")
    parser.add_argument("--pseudo", choices=[m.value for m in PseudoMode], default=PseudoMode.SELECTIVE.value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import rank_pool
    from ..evaluate import evaluate_model
    from ..finetune.adapt import adapt_model
    from ..finetune.config import FinetuneConfig, PseudoLabelConfig, TrainConfig
    from ..io import case_id, find_images, read_volume
    from ..models import load_card, load_model
    from ..query import QueryConfig
    from ..store import resolve_card

    device = resolve_device(args.device)
    out: Path = args.out
    pool = find_images(SAMPLE / "pool" / "images")
    test = find_images(SAMPLE / "test" / "images")
    card = resolve_card("default")
    query = QueryConfig(strategy=args.strategy, seed=args.seed)
    bar = ProgressBar(enabled=not args.quiet)

    print(f"ASSFT demo: {len(pool)} pool volumes, {len(test)} test volumes, model {card.name}, device {device.type}\n")
    print(f"1. Rank Volumes ({args.strategy}, budget {args.budget})")
    first = rank_pool(pool, card, args.budget, out / "round1", query=query, device=device, progress=bar)
    bar.close()
    print(format_ranking(first.ranking, limit=len(pool)))
    proposed = first.ranking.selected_ids
    report = next(r for r in first.volumes if r.case_id == proposed[0])
    regions = json.loads(Path(report.regions).read_text())["regions"] if report.regions else []
    print(
        f"\n   overlays: {out / 'round1' / 'overlays'}; top region of {proposed[0]}:",
        _region_text(regions[0]) if regions else "none above threshold",
    )

    print(f"\n2. Annotate: the shipped labels of {', '.join(proposed)} stand in for the annotator")
    labels = {c: SAMPLE / "pool" / "labels" / f"{c}.nii.gz" for c in proposed}

    print(f"\n3. Adapt Model (pseudo-labels: {args.pseudo})")
    train = TrainConfig(seed=args.seed)
    if args.iterations is not None:
        train = TrainConfig.from_dict({**train.to_dict(), "iterations": args.iterations})
    config = FinetuneConfig(train=train, pseudo=PseudoLabelConfig(mode=args.pseudo))
    result = adapt_model(
        {case_id(p): p for p in pool},
        labels,
        store=out / "store",
        model="default",
        config=config,
        progress=bar,
        device=device,
        predictions_dir=out / "round1" / "adapted",
    )
    bar.close()
    kept = [d.case_id for d in result.pseudo if d.kept]
    print(
        f"   new version {result.name}/{result.version} ({result.seconds:.0f} s): "
        + ("now active" if result.activated else "stored, NOT activated")
    )
    print(f"   why: {result.decision.reason}")
    print(f"   pseudo-labelled volumes kept: {len(kept)} of {len(result.pseudo)}")

    print(f"\n4. Evaluate on {len(test)} held-out volumes (the adapted model, whether or not it was activated)")
    cases = [(read_volume(p), SAMPLE / "test" / "labels" / p.name) for p in test]
    before = evaluate_model(load_model(card, device), None, cases)
    adapted_card = load_card(result.card_path)
    after = evaluate_model(load_model(adapted_card, device), None, cases)
    print(_before_after(before, after))
    (out / "evaluation.md").write_text(f"# Before\n\n{before.to_markdown()}\n# After\n\n{after.to_markdown()}")

    active_card = adapted_card if result.activated else card
    print(f"\n5. Re-rank the rest of the pool with the active model ({active_card.name})")
    second = rank_pool(
        pool,
        active_card,
        args.budget,
        out / "round2",
        labeled_ids=proposed,
        query=query,
        device=device,
        progress=bar,
        feature_cache=out / "store" / "feature-cache",
    )
    bar.close()
    print(format_ranking(second.ranking, limit=args.budget + 3))
    print(f"\nnext proposals: {', '.join(second.ranking.selected_ids)}\nall outputs in {out}")
    return 0


def _region_text(region: dict) -> str:
    x, y, z = region["center_ras"]
    return (
        f"centre RAS ({x:.0f}, {y:.0f}, {z:.0f}) mm, {region['volume_mm3']:.0f} mm³, "
        f"mean entropy {region['mean_entropy']:.2f}"
    )


def _before_after(before, after) -> str:
    lines = [f"   {'class':<12} {'Dice before':>11} {'Dice after':>11} {'HD95 before':>12} {'HD95 after':>11}"]
    dice_b, dice_a = before.mean_dice_per_class(), after.mean_dice_per_class()
    hd_b, hd_a = before.mean_hd95_per_class(), after.mean_hd95_per_class()
    for name in before.class_names:
        lines.append(f"   {name:<12} {dice_b[name]:11.3f} {dice_a[name]:11.3f} {hd_b[name]:12.2f} {hd_a[name]:11.2f}")
    lines.append(f"   {'mean':<12} {before.mean_dice():11.3f} {after.mean_dice():11.3f}")
    return "\n".join(lines)
