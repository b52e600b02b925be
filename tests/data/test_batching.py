import itertools

import numpy as np
import pytest
import torch

from fastbert import BertTokenizer
from fastbert.data.batching import BATCHING, BUCKET, Loader, Stream, encode
from fastbert.data.readers import Example


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.from_pretrained()


def _examples(n, pairs=False, seed=0):
    rng = np.random.default_rng(seed)
    words = ["film", "good", "bad", "a", "the", "movie", "plot", "actor", "scene", "dull"]
    sent = lambda: " ".join(rng.choice(words, int(rng.integers(1, 30))))  # noqa: E731
    return [Example(str(i), (sent(), sent()) if pairs else (sent(),), i % 3) for i in range(n)]


def test_every_example_once_per_epoch_in_a_seeded_order(tok):
    loader = Loader(encode(_examples(103), tok, 64, cross=False), tok, 8, seed=3, bucket=4)
    assert len(loader) == 13
    for epoch in range(2):
        order = loader.order(epoch)
        flat = np.concatenate(order)
        assert sorted(flat.tolist()) == list(range(103)) and all(len(b) <= 8 for b in order)
        assert all(np.array_equal(a, b) for a, b in zip(order, loader.order(epoch)))
    assert not np.array_equal(np.concatenate(loader.order(0)), np.concatenate(loader.order(1)))
    other = Loader(loader.data, tok, 8, seed=4, bucket=4)
    assert not np.array_equal(np.concatenate(loader.order(0)), np.concatenate(other.order(0)))


def test_buckets_cut_padding(tok):
    data = encode(_examples(400), tok, 64, cross=False)
    lengths = data.lengths()

    def padding(loader):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in loader.order(0))

    bucketed, plain = Loader(data, tok, 16, bucket=25), Loader(data, tok, 16, bucket=1)
    assert padding(bucketed) < 0.3 * padding(plain)


def test_padded_to_longest_in_batch_and_packed_equivalent(tok):
    data = encode(_examples(20, pairs=True), tok, 64, cross=False)
    idx = np.array([3, 7, 11])
    padded = Loader(data, tok, 4).batch(idx)
    packed = Loader(data, tok, 4, packed=True).batch(idx)
    assert padded.views == 2 and len(padded) == 3
    lengths = [len(data.seqs[i][v][0]) for v in range(2) for i in idx]  # view-major: all u, then all v
    assert padded.inputs.input_ids.shape == (6, max(lengths))
    assert padded.inputs.lengths.tolist() == lengths == packed.inputs.lengths.tolist()
    assert packed.inputs.input_ids.shape == (sum(lengths),)
    assert torch.equal(packed.inputs.input_ids, padded.inputs.input_ids[padded.inputs.attention_mask.bool()])
    assert packed.inputs.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert padded.labels.tolist() == [0, 1, 2] and padded.labels.dtype == torch.long


def test_cross_encoder_pairs_one_sequence(tok):
    ex = [Example("a", ("the film", "a movie"), 1.5)]
    data = encode(ex, tok, 64, cross=True)
    ids, types = data.seqs[0][0]
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] the film [SEP] a movie [SEP]"
    assert types == [0, 0, 0, 0, 1, 1, 1] and data.labels == [1.5]
    assert Loader(data, tok, 2).batch(np.array([0])).labels.dtype == torch.float32


def test_truncation_to_max_length(tok):
    data = encode([Example("a", ("word " * 100,))], tok, 16, cross=False)
    assert len(data.seqs[0][0][0]) == 16


def _co_batched(order) -> set:
    return {pair for b in order for pair in itertools.combinations(sorted(b.tolist()), 2)}


def _recurrence(loader, epochs=4) -> float:
    """The share of the pairs of examples batched together in epoch e that are batched together again in
    e + 1, over `epochs` such pairs of epochs."""
    shared = total = 0
    for e in range(epochs):
        now = _co_batched(loader.order(e))
        shared, total = shared + len(now & _co_batched(loader.order(e + 1))), total + len(now)
    return shared / total


def test_random_batches_mix_lengths_where_bucketed_ones_do_not(tok):
    data = encode(_examples(600), tok, 64, cross=False)
    lengths = data.lengths()
    bucketed, random = (Loader(data, tok, 16, seed=2, bucket=BATCHING[b]) for b in ("bucketed", "random"))
    assert BATCHING["bucketed"] == BUCKET and bucketed.bucket == BUCKET  # bucketed: the Loader's default

    def spread(loader):  # mean (longest - shortest) in a batch
        return np.mean([lengths[b].max() - lengths[b].min() for b in loader.order(0)])

    assert spread(bucketed) <= 1 and spread(random) > 0.5 * (lengths.max() - lengths.min())
    assert not any(np.array_equal(a, b) for a, b in zip(random.order(0), bucketed.order(0)))
    for epoch in (0, 1):  # every example once per epoch, in an order fixed by (seed, epoch)
        assert sorted(np.concatenate(random.order(epoch)).tolist()) == list(range(600))
        assert all(np.array_equal(a, b) for a, b in zip(random.order(epoch), random.order(epoch)))
    assert not np.array_equal(np.concatenate(random.order(0)), np.concatenate(random.order(1)))


def test_co_batched_pairs_recur_as_in_a_shuffle(tok):
    """A pair batched together meets again next epoch with probability (batch - 1) / (n - 1) under a shuffle;
    length buckets make the same pairs meet again and again."""
    data = encode(_examples(600), tok, 64, cross=False)
    shuffle = 15 / 599
    random = _recurrence(Loader(data, tok, 16, seed=2, bucket=BATCHING["random"]))
    bucketed = _recurrence(Loader(data, tok, 16, seed=2, bucket=BATCHING["bucketed"]))
    assert 0.7 * shuffle < random < 1.3 * shuffle
    assert bucketed > 5 * shuffle


@pytest.mark.parametrize("batching", list(BATCHING))
def test_stream_resumes_at_its_position(tok, batching):
    loader = Loader(encode(_examples(30), tok, 64, cross=False), tok, 4, seed=1, bucket=BATCHING[batching])
    a = Stream(loader)
    seen = [a.next() for _ in range(11)]  # crosses into the second epoch (8 batches each)
    b = Stream(loader)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        x, y = a.next(), b.next()
        assert torch.equal(x.index, y.index) and x.seed == y.seed
    assert a.state_dict() == {"epoch": 2, "index": 5}
    assert len({s.seed for s in seen}) == len(seen)  # per-batch seeds differ


def test_eval_order_longest_first_and_complete(tok):
    data = encode(_examples(50), tok, 64, cross=False)
    batches = list(Loader(data, tok, 16, shuffle=False))
    assert sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(50))
    firsts = [int(b.inputs.lengths.max()) for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_bad_arguments(tok):
    data = encode(_examples(3), tok, 64, cross=False)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        Loader(data, tok, 0)
    with pytest.raises(ValueError, match="no examples"):
        Loader(data.subset([]), tok, 4)
    with pytest.raises(ValueError, match="mix different numbers of texts"):
        encode([Example("a", ("x",)), Example("b", ("x", "y"))], tok, 8, cross=False)
