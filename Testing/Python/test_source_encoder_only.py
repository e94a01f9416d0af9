"""A foundation encoder without a task head (issue 28 item 3): a card naming SwinUNETR self-supervised weights only.

The checkpoint is built here from a randomly initialised tiny SwinUNETR (feature_size 12) in the layout of the
published ``model_swinvit.pt`` that MONAI's ``SwinUNETR.load_from`` reads (a dict with ``state_dict``, encoder keys
``module.patch_embed.*`` / ``module.layers{1..4}.0.*`` with the old ``mlp.fc1``/``fc2`` names, plus the SSL heads
the segmentation network does not have), saved weights-only (``torch.save`` of tensors) and as safetensors. The head
is initialised with a fixed seed; the first ranking uses DKD's diversity alone (no ASD without a trained head, said
in ranking.json and the printed table); Adapt trains head and encoder; re-ranking with the adapted version uses both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_dataset

from ASSFTActive.cli import main
from ASSFTActive.errors import ModelError
from ASSFTActive.models import HEAD_INIT_SEED, ModelCard, build_network, load_card, load_model, save_card
from ASSFTActive.query import QueryConfig, RankingFile, select
from ASSFTActive.query.records import CaseEvidence
from ASSFTActive.query.selection import COLD_START_ASD_REASON, cold_start
from ASSFTActive.store import ModelStore, resolve_card

SWIN_ARGS = {"in_channels": 1, "out_channels": 3, "feature_size": 12, "norm_name": "batch"}
#: ``norm_name`` batch: a 32^3 patch leaves 1 voxel at the bottleneck, which instance norm refuses (a real card
#: would use 96^3 or 64^3 patches; 32^3 keeps the test fast).
SWIN_STAGES = ["swinViT.layers1.0", "swinViT.layers2.0", "swinViT.layers3.0", "swinViT.layers4.0"]
#: The heads of the SSL pre-training network (research-contributions SwinUNETR/Pretrain/models/ssl_head.py) that a
#: segmentation network does not have: rotation (4 classes), contrastive (512) and the reconstruction convolution.
SSL_HEADS = {
    "module.rotation_head.weight": (4, 192),
    "module.rotation_head.bias": (4,),
    "module.contrastive_head.weight": (512, 192),
    "module.contrastive_head.bias": (512,),
    "module.conv.0.weight": (96, 192, 3, 3, 3),
}


def _ssl_checkpoint(network) -> dict:
    """The encoder of ``network`` in the published model_swinvit.pt layout, with the SSL heads beside it."""
    state = {}
    for key, value in network.state_dict().items():
        if key.startswith("swinViT."):
            name = key[len("swinViT.") :].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
            state["module." + name] = value.clone()
    generator = torch.Generator().manual_seed(7)
    for key, shape in SSL_HEADS.items():
        state[key] = torch.randn(shape, generator=generator)
    return {"state_dict": state, "epoch": 100}


def _write_card(folder: Path, weights: str) -> Path:
    card = ModelCard.from_dict(
        {
            "name": "swin-ssl",
            "architecture": "SwinUNETR",
            "arguments": SWIN_ARGS,
            "weights": weights,
            "weights_format": "swinvit_ssl",
            "class_names": ["background", "box_a", "box_b"],
            "encoder_stages": SWIN_STAGES,
            "patch_size": [32, 32, 32],
            "preprocessing": {"profile": "zscore_nonzero"},
            "spacing": None,
            "orientation": "RAS",
        }
    )
    return save_card(card, folder / "card.json")


@pytest.fixture(scope="module")
def source():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(11)
    return SwinUNETR(**SWIN_ARGS)


@pytest.fixture
def encoder_card(tmp_path, source) -> Path:
    """A card folder with the SSL checkpoint saved by torch.save (tensors only: weights_only loads it)."""
    folder = tmp_path / "swin-ssl"
    folder.mkdir()
    torch.save(_ssl_checkpoint(source), folder / "model_swinvit.pt")
    return _write_card(folder, "model_swinvit.pt")


def test_encoder_weights_load_exactly_as_monai_load_from_and_only_the_head_is_missing(encoder_card, source):
    from monai.networks.nets import SwinUNETR

    checkpoint = torch.load(str(encoder_card.parent / "model_swinvit.pt"), weights_only=True)
    assert len([k for k in checkpoint["state_dict"] if k.startswith("module.layers")]) == 124
    reference = SwinUNETR(**SWIN_ARGS)
    reference.load_from(checkpoint)  # MONAI's own reader of this layout
    card = load_card(encoder_card)
    assert not card.has_trained_head
    model = load_model(card)
    report, own = model.report, model.network.state_dict()
    encoder = [k for k in own if k.startswith("swinViT.")]
    assert report.loaded == len(encoder) == 126
    assert set(report.missing) == {k for k in own if not k.startswith("swinViT.")} and report.missing
    assert set(report.unexpected) == {k[len("module.") :] for k in SSL_HEADS}
    assert report.head_initialised and f"initialised with seed {HEAD_INIT_SEED}" in report.summary()
    theirs = reference.state_dict()
    for key in encoder:
        assert torch.equal(own[key], theirs[key]), key
        assert torch.equal(own[key], source.state_dict()[key]), key


def test_safetensors_encoder_weights_load_the_same(tmp_path, source, encoder_card):
    from safetensors.torch import save_file

    folder = tmp_path / "st"
    folder.mkdir()
    save_file(_ssl_checkpoint(source)["state_dict"], str(folder / "model_swinvit.safetensors"))
    from_st = load_model(load_card(_write_card(folder, "model_swinvit.safetensors"))).network.state_dict()
    from_pt = load_model(load_card(encoder_card)).network.state_dict()
    assert from_st.keys() == from_pt.keys() and all(torch.equal(from_st[k], from_pt[k]) for k in from_st)


def test_the_head_is_initialised_from_its_seed_and_leaves_the_callers_random_state_alone(encoder_card):
    card = load_card(encoder_card)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_network(card).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)
    second = build_network(card).state_dict()
    head = [k for k in first if not k.startswith("swinViT.")]
    assert head and all(torch.equal(first[k], second[k]) for k in head)


def test_encoder_weights_that_miss_an_encoder_tensor_are_refused(tmp_path, source):
    checkpoint = _ssl_checkpoint(source)
    del checkpoint["state_dict"]["module.layers2.0.blocks.1.mlp.fc2.weight"]
    folder = tmp_path / "broken"
    folder.mkdir()
    torch.save(checkpoint, folder / "model_swinvit.pt")
    with pytest.raises(ModelError, match="encoder did not load"):
        load_model(load_card(_write_card(folder, "model_swinvit.pt")))


def test_check_card_says_the_head_will_be_initialised(encoder_card, capsys):
    assert main(["check-card", str(encoder_card), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "126 tensors loaded" in out and "5 unexpected" in out
    assert "head:         initialised, not loaded" in out and "encoder weights only" in out
    assert "the card is usable" in out


def test_an_overlay_from_an_encoder_only_card_is_refused_with_what_to_do(encoder_card, tmp_path, capsys):
    images, _ = write_dataset(tmp_path / "pool", count=1, labeled=0)
    assert (
        main(
            [
                "overlay",
                "--image",
                str(images["case_000"]),
                "--model",
                str(encoder_card),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "encoder weights only" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _evidence(case_id: str, embedding, asd: float) -> CaseEvidence:
    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=0.0,
        asd=asd,
        mean_entropy=asd,
        pretrained_embedding=embedding,
        current_embedding=embedding,
        clasp_scores=[],
    )


def test_cold_start_ranks_by_diversity_alone_and_says_why():
    embeddings = {"a": [1.0, 0.0, 0.0], "b": [0.9, 0.1, 0.0], "c": [0.0, 1.0, 0.0], "d": [0.0, 0.0, 1.0]}
    cold = [_evidence(k, v, math.nan) for k, v in embeddings.items()]
    assert cold_start(cold)
    ranking = select(cold, 2, QueryConfig(strategy="assft"))
    diversity = select(cold, 2, QueryConfig(strategy="dkd_only"))
    assert [c.case_id for c in ranking.cases] == [c.case_id for c in diversity.cases]
    assert ranking.asd_unavailable == COLD_START_ASD_REASON and "ASD needs a prediction" in COLD_START_ASD_REASON
    assert all("ASD not computed" in c.reason for c in ranking.cases if c.selected)
    assert all(math.isnan(c.asd) for c in ranking.cases)
    warm = [_evidence(k, v, 0.1 * (i + 1)) for i, (k, v) in enumerate(embeddings.items())]
    assert not cold_start(warm) and select(warm, 2, QueryConfig(strategy="assft")).asd_unavailable == ""
    mixed = cold[:2] + warm[2:]
    assert not cold_start(mixed)
    with pytest.raises(ValueError, match="probabilities"):
        select(mixed, 2, QueryConfig(strategy="assft"))


def test_ranking_file_carries_the_reason_asd_is_missing_and_omits_it_otherwise():
    from ASSFTActive.query import RankingEntry

    entry = RankingEntry(case_id="a", rank=1, selected=True, labeled=False, dkd=1.0, asd=None, score=1.0)
    record = RankingFile(strategy="assft", budget=1, model="m", cases=(entry,), asd_unavailable="why")
    assert RankingFile.from_dict(json.loads(json.dumps(record.to_dict()))).asd_unavailable == "why"
    plain = RankingFile(strategy="assft", budget=1, model="m", cases=(entry,))
    assert "asd_unavailable" not in plain.to_dict()
    with pytest.raises(ValueError, match="asd_unavailable"):
        RankingFile(strategy="assft", budget=1, model="m", cases=(entry,), asd_unavailable="")


def test_first_ranking_on_an_encoder_only_card_uses_diversity_alone_and_says_why(encoder_card, tmp_path, one_thread):
    from ASSFTActive.api import rank_pool

    images, _ = write_dataset(tmp_path / "pool", count=3, labeled=0)
    events = []
    result = rank_pool(sorted(images.values()), load_card(encoder_card), 1, tmp_path / "ranked", progress=events.append)
    assert result.ranking.asd_unavailable == COLD_START_ASD_REASON
    assert [c.case_id for c in result.ranking.cases] == [
        c.case_id for c in select([v.evidence for v in result.volumes], 1, QueryConfig(strategy="dkd_only")).cases
    ]
    record = RankingFile.from_dict(json.loads((tmp_path / "ranked" / "ranking.json").read_text()))
    assert record.asd_unavailable == COLD_START_ASD_REASON and record.probably_wrong is None
    assert all(e.asd is None and e.entropy_map is None and e.prediction is None for e in record.cases)
    assert any(e.event == "warning" and e.message == COLD_START_ASD_REASON for e in events)


@pytest.mark.slow
def test_round_on_an_encoder_only_card_ranks_by_diversity_adapts_head_and_encoder_and_reranks_with_both(
    encoder_card, tmp_path, capsys, one_thread
):
    write_dataset(tmp_path / "pool", count=5, labeled=2)
    images, labels = tmp_path / "pool" / "images", tmp_path / "pool" / "labels"
    first = tmp_path / "round1"
    assert (
        main(
            [
                "rank",
                "--images",
                str(images),
                "--model",
                str(encoder_card),
                "--budget",
                "2",
                "--out",
                str(first),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "n/a" in printed.out and "ASD n/a: ASD needs a prediction" in printed.out
    assert f"warning: {COLD_START_ASD_REASON}" in printed.err  # the event the panel and the browser show
    ranking = json.loads((first / "ranking.json").read_text())
    assert ranking["asd_unavailable"] == COLD_START_ASD_REASON and "probably_wrong" not in ranking
    assert all(c["asd"] is None and math.isfinite(c["dkd"]) for c in ranking["cases"])
    assert sum(c["selected"] for c in ranking["cases"]) == 2
    assert not (first / "overlays").exists() and not (first / "predictions").exists()  # nothing from a random head

    encoder_before = {k: v.clone() for k, v in load_model(load_card(encoder_card)).network.state_dict().items()}
    store = tmp_path / "store"
    assert (
        main(
            [
                "adapt",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--model",
                str(encoder_card),
                "--store",
                str(store),
                "--name",
                "site",
                "--no-guard",
                "--quiet",
                "--iterations",
                "3",
                "--pseudo",
                "none",
                "--semi-iterations",
                "1",
                "--batch-size",
                "2",
                "--learning-rate",
                "0.01",
                "--device",
                "cpu",
                "--allow-implausible-labels",
            ]
        )
        == 0
    )
    capsys.readouterr()
    adapted = resolve_card(store / "site")
    assert ModelStore(store).active("site").version == "v1"
    assert adapted.has_trained_head and adapted.weights_format == "state_dict"
    assert adapted.pretrained_card() == load_card(encoder_card)
    after = load_model(adapted)
    assert after.report.missing == () and not after.report.head_initialised
    trained = after.network.state_dict()
    changed = {k for k in trained if not torch.equal(trained[k], encoder_before[k])}
    assert any(k.startswith("swinViT.") for k in changed), "the encoder was not trained"
    assert any(not k.startswith("swinViT.") for k in changed), "the head was not trained"

    second = tmp_path / "round2"
    assert (
        main(
            [
                "rank",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--model",
                str(store / "site"),
                "--budget",
                "2",
                "--out",
                str(second),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "ASD n/a" not in capsys.readouterr().out
    ranking = json.loads((second / "ranking.json").read_text())
    assert "asd_unavailable" not in ranking
    candidates = [c for c in ranking["cases"] if not c["labeled"]]
    assert len(candidates) == 3 and all(c["asd"] is not None and np.isfinite(c["asd"]) for c in candidates)
    assert any(c["knowledge_divergence"] > 0 for c in candidates)  # the adapted encoder against the pre-trained one
    assert (second / "predictions").is_dir()


def test_the_panels_card_check_says_the_head_will_be_initialised(encoder_card, capsys):
    import slicer_scene

    slicer_scene.requireSlicer()  # ASSFTModuleLib reads volumes through vtk
    from ASSFTModuleLib.jobController import parseCardCheck

    assert main(["check-card", str(encoder_card), "--modules", "--device", "cpu"]) == 0
    check = parseCardCheck(str(encoder_card), capsys.readouterr().out, 0)
    assert check.usable and check.headInitialised
    assert "the segmentation head will be initialised" in check.summary()
