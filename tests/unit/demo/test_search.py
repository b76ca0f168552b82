"""The demo's search tab: a folder of images ranked for a text query by the embedder (the order its
vectors give), the reranker's top reordered by its scores, broken files left out; and the page's
`search` endpoint served and called through gradio_client."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from qwenvl_ft.data.retrieval import Item
from qwenvl_ft.demo.search import SearchIndex
from qwenvl_ft.retrieval import Embedder, Reranker
from qwenvl_ft.tiny import make_tiny

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from qwenvl_ft.models import get_family

    root = tmp_path_factory.mktemp("search")
    make_tiny(get_family("qwen3_vl"), root / "model", real_vocab=True, seed=5)
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    for k, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (64 + 32 * k, 64), rgb).save(folder / ("sub" if k == 3 else "") / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")
    return Embedder.load(root / "model"), Reranker.load(root / "model"), folder


def test_images_are_ranked_by_the_embedders_similarity(setup):
    embedder, _, folder = setup
    index = SearchIndex(embedder, folder, progress=False)
    assert sorted(p.name for p in index.paths) == ["blue.png", "green.png", "grey.png", "red.png"]
    hits = index.search("a red picture", "Find the photo.", top=3)
    q = embedder.embed([Item(texts=["a red picture"])], "Find the photo.")[0]
    sims = {p.name: float(embedder.embed([Item(images=[str(p)])])[0] @ q) for p in index.paths}
    expected = sorted(sims, key=lambda n: -sims[n])[:3]
    assert [h.path.name for h in hits] == expected
    assert [round(h.similarity, 5) for h in hits] == [round(sims[n], 5) for n in expected]
    assert all(h.relevance is None for h in hits)
    with pytest.raises(ValueError, match="type a query first"):
        index.search("  ")


def test_the_reranker_reorders_the_top_by_its_score(setup):
    embedder, reranker, folder = setup
    index = SearchIndex(embedder, folder, reranker, rerank_top=3, progress=False)
    hits = index.search("a green picture", top=4)
    head = hits[:3]
    scores = reranker.score(Item(texts=["a green picture"]), [Item(images=[str(h.path)]) for h in head])
    assert [h.relevance for h in head] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-6)
    assert hits[3].relevance is None  # below the reranked top: embedder order, no score
    assert "relevance" in head[0].caption and torch.isfinite(torch.tensor(head[0].similarity))


def test_a_folder_without_images_is_refused(setup, tmp_path):
    with pytest.raises(ValueError, match="no image to search"):
        SearchIndex(setup[0], tmp_path, progress=False)


def test_the_search_endpoint_on_a_served_page(setup):
    gradio_client = pytest.importorskip("gradio_client", reason="the demo needs the `demo` extra (gradio)")
    from qwenvl_ft.demo.app import build, serve
    from tests.e2e.conftest import free_port

    embedder, _, folder = setup
    demo = build([], search=SearchIndex(embedder, folder, progress=False))
    url = serve(demo, "127.0.0.1", free_port(), block=False)
    try:
        client = gradio_client.Client(url, verbose=False)
        status, gallery = client.predict("a blue picture", "", 2, api_name="/search")
        assert status == "2 of 4 images" and len(gallery) == 2
        assert all(item["caption"].split(":")[0].endswith(".png") for item in gallery)
        status, gallery = client.predict("", "", 2, api_name="/search")
        assert status.startswith("**Not searched:** type a query first") and gallery == []
        client.close()
    finally:
        demo.close()
