"""The embedding and reranker losses against hand-worked values, and the cross-rank gather: two gloo
processes give the gradient one process gives on the whole batch (each document's gradient from
every rank's queries)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qwenvl_ft.config.schema import RerankerConfig
from qwenvl_ft.training.embedding import info_nce, split_groups
from qwenvl_ft.training.reranker import reranker_loss
from qwenvl_ft.training.retrieval import gather_documents


def test_groups_split_into_queries_documents_and_positives():
    rows = torch.arange(5.0)[:, None]  # q1 p1 n1 | q2 p2
    queries, documents, positives = split_groups(rows, torch.tensor([3, 2]))
    assert queries.flatten().tolist() == [0.0, 3.0]
    assert documents.flatten().tolist() == [1.0, 2.0, 4.0]
    assert positives.tolist() == [0, 2]


def test_info_nce_by_hand():
    # Unit vectors at angles: q1 at 0, q2 at 90 degrees; documents at 0, 60, 90 degrees.
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # the second is normalised by the loss
    d = torch.tensor([[3.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    loss, metrics = info_nce(q, d, torch.tensor([0, 2]), temperature=0.5)
    # q1: cosines 1, 0.5, 0 -> logits 2, 1, 0, target 0; q2: cosines 0, 0.866, 1 -> 0, 1.732, 2, target 2.
    l1 = -2 + math.log(math.exp(2) + math.exp(1) + 1)
    l2 = -2 + math.log(1 + math.exp(math.sqrt(3)) + math.exp(2))
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    assert metrics["accuracy"].item() == 1.0
    assert metrics["positive_similarity"].item() == pytest.approx(1.0)
    assert metrics["negative_similarity"].item() == pytest.approx((0.5 + math.sqrt(3) / 2) / 2, rel=1e-6)
    # Only each query's own documents (q1: 0, 1; q2: 2): q2's loss is zero, q1's drops the third.
    allowed = torch.tensor([[True, True, False], [False, False, True]])
    own, _ = info_nce(q, d, torch.tensor([0, 2]), 0.5, allowed=allowed)
    assert own.item() == pytest.approx((-2 + math.log(math.exp(2) + math.exp(1))) / 2, rel=1e-6)


def test_matryoshka_averages_the_full_and_the_truncated_losses():
    q = torch.tensor([[1.0, 0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    full, _ = info_nce(q, d, torch.tensor([0]), 1.0)
    one, _ = info_nce(q[:, :1], d[:, :1], torch.tensor([0]), 1.0)
    both, _ = info_nce(q, d, torch.tensor([0]), 1.0, dims=[1])
    assert both.item() == pytest.approx((full.item() + one.item()) / 2)
    # At width 1: q = (1), documents (1) and (0) -> normalised 1 and 0 (F.normalize's eps): logits 1, 0.
    assert one.item() == pytest.approx(-1 + math.log(math.e + 1), rel=1e-6)


def test_reranker_losses_by_hand():
    scores = torch.tensor([2.0, 0.0, -1.0, 0.5, 1.0])  # query 1: pos, two negs; query 2: pos, one neg
    sizes = torch.tensor([3, 2])
    listwise, m = reranker_loss(scores, sizes, RerankerConfig(loss="listwise", temperature=2.0))
    l1 = -1 + math.log(math.exp(1) + 1 + math.exp(-0.5))
    l2 = -0.25 + math.log(math.exp(0.25) + math.exp(0.5))
    assert listwise.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    assert m["accuracy"].item() == 0.5  # query 2's positive scores below its negative

    pointwise, _ = reranker_loss(scores, sizes, RerankerConfig(loss="pointwise"))

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = [bce(2, 1), bce(0, 0), bce(-1, 0), bce(0.5, 1), bce(1, 0)]
    assert pointwise.item() == pytest.approx(sum(expected) / 5, rel=1e-6)


def _batch(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    encoder = torch.nn.Linear(4, 3)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(3, 4, generator=g))
        encoder.bias.copy_(torch.randn(3, generator=g))
    return encoder, torch.randn(4, 4, generator=g), torch.randn(6, 4, generator=g)  # 4 queries, 6 docs


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    encoder, queries, docs = _batch()
    # Rank 0: queries 0-1 with documents 0-3 (1 and 2 uneven on purpose); rank 1: queries 2-3, docs 4-5.
    q_rows, d_rows = ([0, 1], [0, 1, 2, 3]) if rank == 0 else ([2, 3], [4, 5])
    positives = torch.tensor([0, 2]) if rank == 0 else torch.tensor([0, 1])
    gathered, offset = gather_documents(encoder(docs[d_rows]))
    loss, _ = info_nce(encoder(queries[q_rows]), gathered, positives + offset, 0.1)
    loss.backward()
    for p in encoder.parameters():  # what DDP / DeepSpeed do: the mean of the ranks' gradients
        dist.all_reduce(p.grad)
        p.grad /= 2
    out[rank] = (loss.item(), encoder.weight.grad.clone(), encoder.bias.grad.clone())
    dist.destroy_process_group()


def test_two_processes_give_the_gradient_of_one_process_on_the_whole_batch():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)

    encoder, queries, docs = _batch()
    loss, _ = info_nce(encoder(queries), encoder(docs), torch.tensor([0, 2, 4, 5]), 0.1)
    loss.backward()
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(loss.item(), rel=1e-6)
    for k in (0, 1):
        torch.testing.assert_close(out[k][1], encoder.weight.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out[k][2], encoder.bias.grad, atol=1e-6, rtol=1e-5)
