"""What does ranking cost? Wall time and peak memory of ASSFT scoring against one plain inference pass.

Measured side by side in one run, each measurement in a fresh process (so peak RSS belongs to it alone), on volumes
of three sizes: hippocampus crops (real MSD cases), 128³, and a CT-sized 512×512×300 volume made by resampling the
real TotalSegmentator fixture. For each size:

* ``plain``: one sliding-window pass of the model (no hooks), the unit of every ratio;
* ``assft``: a cold-start ranking pass (current = pre-trained model): probabilities, features, DKD/ASD evidence;
* ``assft_adapted``: ranking with an adapted model, so the frozen pre-trained encoder runs too (encoder only);
* ``assft_adapted_cached``: the same with the pre-trained features already cached (every round after the first);
* ``mc_dropout``: MC-dropout scoring with 10 stochastic passes (MONAI Label's epistemic scoring).

Also the end-to-end wall time of ``assft rank`` as a user types it, on 20 hippocampus cases (goal: under 60 s on
2 CPU cores; ratio of ranking to a plain pass at most 1.3).

Usage:
    .venv/bin/python Testing/Benchmarks/ranking_cost.py --profile quick   # hippocampus + 128³ (~3 min)
    .venv/bin/python Testing/Benchmarks/ranking_cost.py --profile full    # adds 512×512×300 (~40 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
HIPPOCAMPUS = SHARED / "hippocampus"
CT_FIXTURE = SHARED / "fixtures" / "totalsegmentator-ct" / "example_ct_sm.nii.gz"
METHODS = ("plain", "assft", "assft_adapted", "assft_adapted_cached", "mc_dropout")
MC_SAMPLES = 10


def _hippocampus_cases(count: int):
    from ASSFTActive.io import case_id
    from ASSFTActive.splits import read_reserved, split_cases

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

    from ASSFTActive.models import EMBEDDED_DEFAULT_CARD, derive_card, load_model, resolve_card, save_card, save_weights

    base = resolve_card("default")
    model = load_model(base)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.network.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    save_weights(model.network, folder / "weights.safetensors")
    card = derive_card(base, name="adapted", weights="weights.safetensors", pretrained=str(EMBEDDED_DEFAULT_CARD),
                       provenance={})
    save_card(card, folder / "card.json")
    return folder / "card.json"


def measure(method: str, images, work: Path) -> dict:
    """Run one method over ``images`` in this process; seconds exclude model loading."""
    import torch

    from ASSFTActive.api import analyse_volume, make_predictor
    from ASSFTActive.io import read_volume
    from ASSFTActive.models import load_card, resolve_card
    from ASSFTActive.query import QueryConfig

    torch.set_num_threads(os.cpu_count() or 1)
    cache = work / "feature-cache"
    card = load_card(_adapted_card(work / "adapted")) if method.startswith("assft_adapted") else resolve_card("default")
    predictor = make_predictor(card, feature_cache=cache if method == "assft_adapted_cached" else None)
    query = QueryConfig(strategy="mc_dropout" if method == "mc_dropout" else "assft", mc_samples=MC_SAMPLES)
    if method == "assft_adapted_cached":  # fill the cache first, as the previous round did
        for path in images:
            predictor.predict(read_volume(path))

    def run_once(path) -> None:
        if method == "plain":
            predictor.plain_pass(read_volume(path))
        else:
            analyse_volume(Path(path), predictor, query)

    run_once(images[0])  # warm-up: the first convolutions of a process pick their kernels and are much slower
    start = time.perf_counter()
    for path in images:
        run_once(path)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seconds": seconds, "peak_rss_mb": peak_mb, "volumes": len(images)}


def _run_isolated(method: str, size: str, images, work: Path) -> dict:
    spec = json.dumps({"method": method, "size": size, "images": [str(p) for p in images], "work": str(work)})
    out = subprocess.run([sys.executable, __file__, "--measure", spec], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli_rank(images_dir: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ASSFTActive", "rank", "--images", str(images_dir), "--budget", "4",
                    "--out", str(out), "--quiet"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        result = measure(spec["method"], [Path(p) for p in spec["images"]], Path(spec["work"]))
        print(json.dumps({**result, "size": spec["size"]}))
        return
    if not HIPPOCAMPUS.is_dir():
        sys.exit(f"needs {HIPPOCAMPUS} (the project's shared data)")

    sizes = ["hippocampus", "128"] + (["ct"] if args.profile == "full" else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images_dir = tmp / "pool20"
        images_dir.mkdir()
        for path in _hippocampus_cases(20):
            os.symlink(path, images_dir / path.name)
        cli_seconds = _cli_rank(images_dir, tmp / "cli-out")
        for size in sizes:
            work = tmp / size
            work.mkdir()
            images = _make_volume(size, work, count=20)
            for method in METHODS:
                rows.append({**_run_isolated(method, size, images, work), "size": size})
                print(f"  {size:<12} {method:<22} {rows[-1]['seconds']:8.2f} s  {rows[-1]['peak_rss_mb']:7.0f} MB",
                      file=sys.stderr, flush=True)

    print(f"# Ranking cost ({args.profile} profile)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"no GPU used.\n")
    print(f"`assft rank` on 20 hippocampus cases, end to end as typed (process start, model load, overlays): "
          f"**{cli_seconds:.1f} s** (goal < 60 s)\n")
    print("| volume | method | seconds per volume | ratio to plain pass | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for size in sizes:
        plain = next(r for r in rows if r["size"] == size and r["method"] == "plain")
        for r in (r for r in rows if r["size"] == size):
            per = r["seconds"] / r["volumes"]
            print(f"| {size} | {r['method']} | {per:.3f} | {r['seconds'] / plain['seconds']:.2f} | "
                  f"{r['peak_rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"cli_seconds_20": cli_seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
