"""CLIP scoring with a tiny open_clip model whose random weights go through the real file-loading path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concepts_tiny_clip import register_tiny, tiny_weights
from PIL import Image

from clipprobe.concepts.scoring import ClipScorer, group_probabilities, score_pool
from clipprobe.concepts.splits import select_splits
from clipprobe.concepts.vocabulary import Vocabulary, load_vocabulary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    name = register_tiny(folder)
    return name, tiny_weights(folder, name)


@pytest.fixture(scope="module")
def scorer(tiny):
    name, weights = tiny
    return ClipScorer.create(name, str(weights))


def _pool(folder, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rel = f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / rel)
        paths.append(rel)
    return paths


def test_weights_file_loads_and_matches_the_saved_state(tiny, scorer):
    name, weights = tiny
    saved = torch.load(weights, weights_only=True)
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    prov = scorer.provenance()
    assert prov["clip_model"] == name and prov["clip_pretrained"] == weights.name
    assert len(prov["clip_weights_sha256"]) == 64
    assert prov["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)


def test_group_probabilities_sum_to_one_per_group(scorer):
    vocab = load_vocabulary("seed")
    text = scorer.text_features(vocab)
    assert [t.shape for t in text] == [(4, 16), (3, 16), (2, 16)]
    assert scorer.text_features(vocab)[0] is text[0]  # computed once per group
    probs = scorer.score_images(torch.randn(5, 3, 32, 32), text)
    assert probs.shape == (5, 9)
    np.testing.assert_allclose(probs[:, :4].sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs[:, 4:7].sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs[:, 7:].sum(1), 1, atol=1e-5)


def test_bf16_on_cpu_agrees_with_fp32(tiny, scorer):
    name, weights = tiny
    low = ClipScorer.create(name, str(weights), precision="bf16")
    vocab = load_vocabulary("seed")
    x = torch.randn(4, 3, 32, 32)
    np.testing.assert_allclose(low.score_images(x, low.text_features(vocab)),
                               scorer.score_images(x, scorer.text_features(vocab)), atol=0.05)


def test_missing_weights_file_is_one_line(tiny, tmp_path):
    name, _ = tiny
    with pytest.raises(FileNotFoundError, match=r"CLIP weights file not found: .*nope\.pt \(give an existing"):
        ClipScorer.create(name, str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="unknown pretrained tag 'laion9' for ViT-B-32: known tags are .*openai"):
        ClipScorer.create("ViT-B-32", "laion9")
    with pytest.raises(ValueError, match="unknown CLIP architecture 'ViT-Q-99'"):
        ClipScorer.create("ViT-Q-99", None)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device: use bf16 on CPU"):
        ClipScorer.create(name, None, precision="fp16")


def test_score_pool_shapes_and_sums(scorer, tmp_path):
    paths = _pool(tmp_path / "pool", 10)
    vocab = load_vocabulary("seed")
    out = score_pool(scorer, tmp_path / "pool", paths, vocab, chunk_dir=tmp_path / "chunks",
                     batch_size=4, num_workers=0, chunk_size=6)
    assert list(out.scores.columns) == ["path", *vocab.concepts]
    assert out.scores["path"].tolist() == paths and out.unreadable == []
    np.testing.assert_allclose(out.scores[["female", "male"]].sum(1), 1, atol=1e-5)


def test_planted_embeddings_give_the_known_top_k():
    """Image i has cosine rising with i against 'red': the top-k are exactly the k highest i."""
    rng = np.random.default_rng(1)
    n, top_k = 60, 7
    red, other = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    # distinct angles near 45 degrees: cosines differ by a few hundredths, as real CLIP cosines do
    angle = torch.pi / 4 + (torch.tensor(rng.permutation(n), dtype=torch.float32) / n - 0.5) * 0.2
    feats = torch.stack([torch.cos(angle), torch.sin(angle), torch.zeros(n)], dim=1)
    probs = group_probabilities(feats, [torch.stack([red, other])], scale=100.0).numpy()
    import pandas as pd

    scores = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "red": probs[:, 0], "other": probs[:, 1]})
    vocab = Vocabulary.from_dict({"colours": ["red", "other"]})
    table = select_splits(scores, vocab, top_k=top_k, negatives=20, test_fraction=0.3, seed=0)
    pos = table[(table.concept == "red") & (table.label == 1)]
    expected = [f"{i}.png" for i in np.argsort(angle.numpy())[:top_k]]  # smallest angle = largest cosine
    assert pos["path"].tolist() == expected
    assert pos["rank"].tolist() == list(range(1, top_k + 1))


def test_planted_pool_end_to_end(scorer, tmp_path, monkeypatch):
    """Through score_pool: the image tower is replaced by per-channel means, text by fixed axes."""
    root = tmp_path / "pool"
    root.mkdir()
    reds = np.random.default_rng(3).permutation(np.arange(40, 240, 5))  # 40 distinct red levels
    for i, r in enumerate(reds):
        Image.new("RGB", (32, 32), (int(r), 120, 120)).save(root / f"p{i:02d}.png")
    paths = sorted(p.name for p in root.iterdir())
    vocab = Vocabulary.from_dict({"colours": ["red", "grey"]})
    monkeypatch.setattr(scorer.model, "encode_image", lambda x: x.float().mean(dim=(2, 3)))
    axes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    monkeypatch.setattr(scorer, "text_features", lambda v, p=None: [axes])
    out = score_pool(scorer, root, paths, vocab, chunk_dir=tmp_path / "c", batch_size=8, num_workers=0)
    table = select_splits(out.scores, vocab, top_k=5, negatives=10, seed=0)
    top = table[(table.concept == "red") & (table.label == 1)]["path"].tolist()
    assert top == [f"p{i:02d}.png" for i in np.argsort(-reds)[:5]]
    # The cosines are those of the planted embeddings: normalised channel means against the fixed axes.
    means = np.stack([np.asarray(scorer.preprocess(Image.open(root / p).convert("RGB"))).mean(axis=(1, 2))
                      for p in out.similarities["path"]])
    expected = (means / np.linalg.norm(means, axis=1, keepdims=True)) @ axes.numpy().T
    assert list(out.similarities.columns) == ["path", "red", "grey"]
    np.testing.assert_allclose(out.similarities[["red", "grey"]].to_numpy(), expected, atol=1e-5)
