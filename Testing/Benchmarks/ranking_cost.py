"""What does ranking cost? Wall time and peak memory of ASSFT scoring against one plain inference pass.

Measured side by side in one run, each measurement in a fresh process (so peak RSS belongs to it alone), on volumes
of three sizes: hippocampus crops (real MSD cases), 128³, and a CT-sized 512×512×300 volume made by resampling the
real TotalSegmentator fixture, and with two model cards: the embedded 3-class default and ``many``, the same UNet
with 105 output channels and random weights (a TotalSegmentator-like class count), so the class-count scaling shows.
For each size and card:

* ``plain``: one streamed sliding-window pass of the model giving the label map (no hooks, no scores), the unit of
  every ratio;
* ``assft``: a cold-start ranking pass (current = pre-trained model): reduced maps, features, DKD/ASD evidence;
* ``assft_with_outputs``: the same plus what ``assft rank`` writes for a proposed volume (the uint8 entropy overlay,
  the regions, the predicted label map), one volume at a time, so the writes stay on the critical path;
* ``assft_pool`` and ``assft_pool_with_outputs``: one ``rank_pool`` call (selection and ranking files included) over
  a pool of ``--pool-size`` volumes (default 4; for 128³ and the CT the one made volume under as many names),
  without and with the per-volume outputs. There the outputs of a volume are written on a background thread while
  the next one is predicted (:class:`~ASSFTActive.inference.writing.BackgroundWriter`), so their cost shows as the
  difference between the two rows; seconds and ratios are per volume;
* ``assft_full_softmax``: the ranking pass that also keeps the whole softmax on the input grid (what every pass did
  before the streamed reduction; the memory it needs grows with C; not run for the ``many`` card on the CT);
* ``assft_adapted``: ranking with an adapted model, so the frozen pre-trained encoder runs too (encoder only);
* ``assft_adapted_cached``: the same with the pre-trained features already cached (every round after the first);
* ``mc_dropout``: MC-dropout scoring with 10 stochastic passes (MONAI Label's epistemic scoring).

Also the end-to-end wall time of ``assft rank`` as a user types it, on 20 hippocampus cases (goal: under 60 s on
2 CPU cores; ratio of ranking to a plain pass at most 1.3).

Usage:
    .venv/bin/python Testing/Benchmarks/ranking_cost.py --profile quick   # hippocampus + 128³ (~5 min)
    .venv/bin/python Testing/Benchmarks/ranking_cost.py --profile full    # adds 512×512×300 (hours on 2 cores)
    python Testing/Benchmarks/ranking_cost.py --profile full --device cuda --json out.json   # on a GPU machine
    python Testing/Benchmarks/ranking_cost.py --sizes ct --cards default --no-cli --device cuda \
        --methods plain assft assft_with_outputs assft_pool assft_pool_with_outputs --pool-size 4  # write overlap

``--json`` is rewritten after every measurement, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
HIPPOCAMPUS = SHARED / "hippocampus"
CT_FIXTURE = SHARED / "fixtures" / "totalsegmentator-ct" / "example_ct_sm.nii.gz"
METHODS = (
    "plain",
    "assft",
    "assft_with_outputs",
    "assft_full_softmax",
    "assft_adapted",
    "assft_adapted_cached",
    "mc_dropout",
    "assft_pool",
    "assft_pool_with_outputs",
)
#: Methods that rank a pool in one ``rank_pool`` call (their seconds cover ``pool_size`` volumes).
POOL_METHODS = ("assft_pool", "assft_pool_with_outputs")
POOL_SIZE = 4
#: Methods run with the many-class card (its adapted and MC-dropout rows would repeat the default card's story).
MANY_CLASS_METHODS = ("plain", "assft", "assft_with_outputs", "assft_full_softmax")
MANY_CLASSES = 105
MC_SAMPLES = 10


def _hippocampus_cases(count: int):
    from ASSFTActive.io import case_id
    from Testing.Benchmarks.harness.splits import read_reserved, split_cases

    ids = [case_id(p) for p in sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))]
    pool = split_cases(ids, read_reserved(HIPPOCAMPUS / "reserved.txt")).target_pool[:count]
    return [HIPPOCAMPUS / "imagesTr" / f"{c}.nii.gz" for c in pool]


def _make_volume(size: str, folder: Path, count: int):
    """Image files for one size: real hippocampus crops, or resampled real data."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ASSFTActive.io import Volume, read_volume, write_volume

    if size == "hippocampus":
        return _hippocampus_cases(count)
    shape = {"128": (128, 128, 128), "ct": (512, 512, 300)}[size]
    source = read_volume(CT_FIXTURE if size == "ct" else _hippocampus_cases(1)[0])
    array = torch.from_numpy(source.array.astype(np.float32))[None, None]
    array = F.interpolate(array, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    spacing = np.asarray(source.shape) * source.spacing / np.asarray(shape)
    affine = source.affine.copy()
    affine[:3, :3] = source.affine[:3, :3] / source.spacing * spacing
    path = folder / f"{size}.nii.gz"
    write_volume(Volume(array.astype(np.int16), affine), path)
    return [path]


def _adapted_card(folder: Path):
    """A copy of the embedded default with perturbed weights whose card points back to the original."""
    import torch

    from ASSFTActive.models import EMBEDDED_DEFAULT_CARD, derive_card, load_model, save_card, save_weights
    from ASSFTActive.store import resolve_card

    base = resolve_card("default")
    model = load_model(base)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.network.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    save_weights(model.network, folder / "weights.safetensors")
    card = derive_card(
        base, name="adapted", weights="weights.safetensors", pretrained=str(EMBEDDED_DEFAULT_CARD), provenance={}
    )
    save_card(card, folder / "card.json")
    return folder / "card.json"


def _many_class_card(folder: Path):
    """The default UNet with ``MANY_CLASSES`` outputs and random weights (a generic many-class model)."""
    import torch

    from ASSFTActive.models import build_network, save_card, save_weights
    from ASSFTActive.store import resolve_card

    folder.mkdir(parents=True, exist_ok=True)
    names = ["background"] + [f"structure_{i:03d}" for i in range(1, MANY_CLASSES)]
    card = dataclasses.replace(
        resolve_card("default"),
        name="many-class",
        weights="weights.safetensors",
        weights_format="state_dict",
        pretrained=None,
        provenance={},
        path=None,
        arguments={**resolve_card("default").arguments, "out_channels": MANY_CLASSES},
        class_names=tuple(names),
    )
    torch.manual_seed(0)
    save_weights(build_network(card), folder / "weights.safetensors")
    save_card(card, folder / "card.json")
    return folder / "card.json"


def _pool(images, pool_size: int, folder: Path):
    """``pool_size`` image files named apart (links to ``images``, repeated when there are fewer of them)."""
    from ASSFTActive.io import case_id

    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for index in range(pool_size):
        source = Path(images[index % len(images)])
        link = folder / f"{case_id(source)}_{index:02d}.nii.gz"
        if not link.exists():
            os.symlink(source.resolve(), link)
        pool.append(link)
    return pool


def measure(method: str, card_name: str, images, work: Path, device: str, pool_size: int = POOL_SIZE) -> dict:
    """Run one method over ``images`` in this process; seconds exclude model loading and a warm-up pass.

    The pool methods rank ``pool_size`` volumes made from ``images`` (:func:`_pool`) in one ``rank_pool`` call.
    """
    import torch

    from ASSFTActive.api import analyse_volume, make_predictor, rank_pool
    from ASSFTActive.io import read_volume
    from ASSFTActive.models import load_card
    from ASSFTActive.query import QueryConfig, RegionSpec
    from ASSFTActive.store import resolve_card

    torch.set_num_threads(os.cpu_count() or 1)
    cache = work / "feature-cache"
    if card_name == "many":
        card = load_card(_many_class_card(work / "many"))
    elif method.startswith("assft_adapted"):
        card = load_card(_adapted_card(work / "adapted"))
    else:
        card = resolve_card("default")
    predictor = make_predictor(
        card, device=torch.device(device), feature_cache=cache if method == "assft_adapted_cached" else None
    )
    query = QueryConfig(strategy="mc_dropout" if method == "mc_dropout" else "assft", mc_samples=MC_SAMPLES)
    if method == "assft_adapted_cached":  # fill the cache first, as the previous round did
        for path in images:
            predictor.predict(read_volume(path))
    outputs = work / f"outputs-{card_name}-{method}"

    def run_once(path) -> None:
        if method in POOL_METHODS:  # only the warm-up comes here; the pool is ranked below
            analyse_volume(Path(path), predictor, query)
        elif method == "plain":
            predictor.plain_pass(read_volume(path))
        elif method == "assft_full_softmax":
            predictor.predict(read_volume(path), regions=RegionSpec.from_config(query), keep_probs=True)
        else:
            analyse_volume(Path(path), predictor, query, out_dir=outputs if method == "assft_with_outputs" else None)

    run_once(_hippocampus_cases(1)[0])  # warm-up: the first convolutions of a process pick their kernels
    if device == "cuda":
        torch.cuda.synchronize()
    if method in POOL_METHODS:
        images = _pool(images, pool_size, work / "pool")
    start = time.perf_counter()
    if method in POOL_METHODS:
        rank_pool(
            images,
            card,
            1,
            outputs,
            query=query,
            device=torch.device(device),
            predictor=predictor,
            write_outputs=method == "assft_pool_with_outputs",
        )
    else:
        for path in images:
            run_once(path)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "method": method,
        "card": card_name,
        "device": device,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "volumes": len(images),
    }
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _run_isolated(
    method: str, card: str, size: str, images, work: Path, device: str, pool_size: int = POOL_SIZE
) -> dict:
    spec = json.dumps(
        {
            "method": method,
            "card": card,
            "size": size,
            "images": [str(p) for p in images],
            "work": str(work),
            "device": device,
            "pool_size": pool_size,
        }
    )
    out = subprocess.run([sys.executable, __file__, "--measure", spec], capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "card": card, "device": device, "size": size, "failed": tail[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli_rank(images_dir: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ASSFTActive",
            "rank",
            "--images",
            str(images_dir),
            "--budget",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON (after every measurement)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the windows run")
    parser.add_argument(
        "--sizes", nargs="+", choices=("hippocampus", "128", "ct"), help="volume sizes (default: the profile's)"
    )
    parser.add_argument("--cards", nargs="+", choices=("default", "many"), default=["default", "many"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="methods (default: all)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=POOL_SIZE,
        help=f"volumes ranked in one call by the pool methods (default {POOL_SIZE})",
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end `assft rank` timing")
    parser.add_argument("--render", type=Path, help="print the table of a JSON file written by --json, and stop")
    args = parser.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        print(
            format_table(
                data["rows"],
                data.get("cli_seconds_20"),
                "recorded",
                data.get("device", "cpu"),
                machine=data.get("machine"),
            )
        )
        return
    if args.measure:
        spec = json.loads(args.measure)
        result = measure(
            spec["method"],
            spec["card"],
            [Path(p) for p in spec["images"]],
            Path(spec["work"]),
            spec["device"],
            spec.get("pool_size", POOL_SIZE),
        )
        print(json.dumps({**result, "size": spec["size"]}))
        return
    if not HIPPOCAMPUS.is_dir():
        sys.exit(f"needs {HIPPOCAMPUS} (the project's shared data)")
    if args.pool_size < 1:
        parser.error(f"--pool-size must be 1 or more, got {args.pool_size}")

    sizes = args.sizes or (["hippocampus", "128"] + (["ct"] if args.profile == "full" else []))
    rows: list = []
    cli_seconds = None

    def save() -> None:
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"cli_seconds_20": cli_seconds, "device": args.device, "machine": _machine(), "rows": rows},
                    indent=2,
                )
            )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_cli:
            images_dir = tmp / "pool20"
            images_dir.mkdir()
            for path in _hippocampus_cases(20):
                os.symlink(path, images_dir / path.name)
            cli_seconds = _cli_rank(images_dir, tmp / "cli-out")
            save()
        for size in sizes:
            work = tmp / size
            work.mkdir()
            images = _make_volume(size, work, count=20)
            for card in args.cards:
                for method in METHODS if card == "default" else MANY_CLASS_METHODS:
                    if args.methods and method not in args.methods:
                        continue
                    if card == "many" and size == "ct" and method == "assft_full_softmax":
                        continue  # 105 × 78.6 M float32 on the input grid: 33 GB, the point of the reduction
                    rows.append(
                        {**_run_isolated(method, card, size, images, work, args.device, args.pool_size), "size": size}
                    )
                    row = rows[-1]
                    print(
                        f"  {size:<12} {card:<8} {method:<22} "
                        + (
                            f"{row['seconds']:8.2f} s  {row['peak_rss_mb']:7.0f} MB"
                            if "seconds" in row
                            else f"failed: {row['failed']}"
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                    save()
    print(format_table(rows, cli_seconds, args.profile, args.device))


def _machine() -> str:
    text = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def format_table(rows, cli_seconds, profile: str, device: str, machine: Optional[str] = None) -> str:
    """The Markdown table of a run (also used to render a JSON file: ``--render``)."""
    lines = [f"# Ranking cost ({profile} profile, windows on {device})\n", f"Machine: {machine or _machine()}.\n"]
    if cli_seconds is not None:
        lines.append(
            f"`assft rank` on 20 hippocampus cases, end to end as typed (process start, model load, "
            f"overlays): **{cli_seconds:.1f} s** (goal < 60 s)\n"
        )
    lines += [
        "| volume | card | method | seconds per volume | ratio to plain pass | peak RSS (MB) | peak GPU (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['size']} | {r['card']} | {r['method']} | failed: {r['failed']} | | | |")
            continue
        plain = next(
            (
                p
                for p in rows
                if p["size"] == r["size"] and p["card"] == r["card"] and p["method"] == "plain" and "seconds" in p
            ),
            None,
        )
        per_volume = r["seconds"] / r["volumes"]  # the pool methods rank more volumes than the others
        ratio = f"{per_volume / (plain['seconds'] / plain['volumes']):.2f}" if plain else "-"
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        lines.append(
            f"| {r['size']} | {r['card']} | {r['method']} | {per_volume:.3f} | {ratio} | "
            f"{r['peak_rss_mb']:.0f} | {gpu} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
