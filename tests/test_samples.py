"""Samples: predictions read a Dataset only where they need it, and equal the in-memory tensors' predictions."""
import numpy as np
import pytest
import torch

import zoo_kernels as zk
from zoo_kernels.predict import RECOMMENDED, auto_subset, recommended_warmup
from zoo_kernels.samples import Samples

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 5, 3


def row(i):
    """Sample i of a generated data set, from i alone (a Dataset needs no storage)."""
    g = torch.Generator().manual_seed(1000 + int(i))
    return torch.randn(D, generator=g), int(i) % C


class LazyRows(torch.utils.data.Dataset):
    """N generated rows; counts the reads; `bad` replaces some rows' items."""

    def __init__(self, n, targets=False, bad=None):
        self.n, self.reads, self.bad = n, [], bad or {}
        if targets:
            self.targets = [i % C for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(i)
        x, y = row(i)
        return self.bad.get(i, (x, y))


def model_of(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, C))


def materialized(n):
    xs, ys = zip(*(row(i) for i in range(n)))
    return torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("method", ["sketch", "head-aware"])
def test_a_subset_prediction_reads_only_its_rows_and_equals_the_tensors_one(method):
    n, M, B, H = 3000, 120, 16, 30
    ds = LazyRows(n)
    kw = dict(lr=0.2, batch_size=B, max_steps=15, momentum=0.9, paths=2, seed=5, method=method, subset=M, k=64)
    if method == "head-aware":
        kw["holdout"] = H
    a = zk.predict_training_time(model_of(), ds, **kw)
    read = len(ds.reads)
    # the subset, the holdout rows and the step timer's 4 batches, nothing else
    assert read == M + (H if method == "head-aware" else 0) + 4 * B
    b = zk.predict_training_time(model_of(), materialized(n), **kw)
    np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-12)
    np.testing.assert_allclose(a.accuracy_curve, b.accuracy_curve, rtol=1e-12)
    assert a.n_samples == n


def test_the_recommended_mode_reads_its_warmup_batches_and_equals_the_tensors_one():
    n, B = 2400, 16
    K = recommended_warmup(n, B)
    M = auto_subset(n, C)
    H = 200
    kw = dict(lr=0.1, batch_size=B, max_steps=K + 30, momentum=0.9, paths=2, seed=3, method="recommended")
    ds = LazyRows(n)  # no targets: the class count comes from the model's output width (one read of row 0)
    a = zk.predict_training_time(model_of(1), ds, **kw)
    # row 0 for the class count; the subset once (kept for the predictor at w_K), the holdout rows; the K batches of
    # the warm-up
    assert len(ds.reads) == 1 + M + H + K * B
    b = zk.predict_training_time(model_of(1), materialized(n), **kw)
    np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-10)
    np.testing.assert_allclose(a.accuracy_curve, b.accuracy_curve, rtol=1e-10)
    with_targets = LazyRows(n, targets=True)
    c = zk.predict_training_time(model_of(1), with_targets, **kw)
    assert len(with_targets.reads) == len(ds.reads) - 1  # the labels came from `targets`
    np.testing.assert_allclose(c.loss_curve, b.loss_curve, rtol=1e-10)


def test_worker_processes_read_the_same_batches():
    n, B = 1200, 16
    kw = dict(lr=0.1, batch_size=B, max_steps=recommended_warmup(n, B) + 10, momentum=0.9, paths=2, seed=4,
              method="recommended")
    a = zk.predict_training_time(model_of(2), Samples(LazyRows(n), num_workers=2), **kw)
    b = zk.predict_training_time(model_of(2), LazyRows(n), **kw)
    np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-10)
    idx = torch.randperm(n)[:600]  # more than one chunk
    x, y = Samples(LazyRows(n), num_workers=2).take(idx)
    x0, y0 = Samples(LazyRows(n)).take(idx)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    bad = LazyRows(n, bad={int(idx[300]): (torch.full((D,), float("nan")), 0)})
    with pytest.raises(ValueError, match=rf"NaN or Inf \(sample {int(idx[300])}\)"):
        Samples(bad, num_workers=2).take(idx)


def test_samples_read_and_check_rows():
    s = Samples(LazyRows(50))
    assert len(s) == 50 and s.labels is None
    x, y = s.take(torch.tensor([3, 7]))
    torch.testing.assert_close(x, torch.stack([row(3)[0], row(7)[0]]))
    assert y.tolist() == [0, 1] and y.dtype == torch.int64
    assert s.num_classes(model_of()) == C
    t = Samples(LazyRows(50, targets=True))
    assert t.labels.tolist()[:4] == [0, 1, 2, 0] and t.num_classes(None) == C
    xs, ys = materialized(20)
    u = Samples((xs, ys))
    torch.testing.assert_close(u.take([1, 2])[0], xs[1:3])
    assert [b[1].tolist() for b in u.batches([torch.tensor([0, 1]), torch.tensor([5])])] == [[0, 1], [2]]


def test_bad_data_gets_a_clear_error():
    model = model_of()
    kw = dict(lr=0.1, batch_size=4, max_steps=3, k=16)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from (row(i) for i in range(10))

    with pytest.raises(TypeError, match="IterableDataset, which has no random access"):
        zk.predict_training_time(model, Stream(), **kw)

    class NoLen(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return row(i)

    with pytest.raises(TypeError, match=r"must have a length \(__len__\)"):
        zk.predict_training_time(model, NoLen(), **kw)
    nan = LazyRows(30, bad={4: (torch.full((D,), float("nan")), 1)})
    with pytest.raises(ValueError, match=r"inputs contain NaN or Inf \(sample 4\)"):
        zk.predict_training_time(model, nan, **kw)
    with pytest.raises(ValueError, match=r"labels must be integer class labels >= 0, got 1.5 \(sample 2\)"):
        zk.predict_training_time(model, LazyRows(30, bad={2: (row(2)[0], 1.5)}), **kw)
    with pytest.raises(ValueError, match=r"labels must be integer class labels >= 0, got -1 \(sample 2\)"):
        zk.predict_training_time(model, LazyRows(30, bad={2: (row(2)[0], -1)}), **kw)
    with pytest.raises(TypeError, match=r"`data`\[5\] must be an \(input, label\) pair, got Tensor"):
        zk.predict_training_time(model, LazyRows(30, bad={5: row(5)[0]}), **kw)
    xs, ys = materialized(30)
    with pytest.raises(ValueError, match="labels must be integer class labels >= 0, got -2"):
        zk.predict_training_time(model, (xs, torch.where(ys == 1, -2, ys)), **kw)
    with pytest.raises(ValueError, match="one label per input"):
        zk.predict_training_time(model, (xs, ys[:-1]), **kw)
    with pytest.raises(ValueError, match="`num_workers` must be an int >= 0"):
        Samples(LazyRows(30), num_workers=-1)
    # a NaN row the prediction reads only in the warm-up is found there
    n, B = 400, 8
    K = recommended_warmup(n, B)
    assert K * B >= n  # the warm-up reads every row
    warm_only = sorted(set(range(n)) - _subset_and_holdout_rows(n))
    bad = LazyRows(n, bad={warm_only[0]: (torch.full((D,), float("inf")), 0)})
    with pytest.raises(ValueError, match=rf"NaN or Inf \(sample {warm_only[0]}\)"):
        zk.predict_training_time(model, bad, lr=0.1, batch_size=B, max_steps=K + 5, momentum=0.9, paths=2,
                                 method="recommended")


def _subset_and_holdout_rows(n):
    from zoo_kernels.predict import recommended_holdout, subset_indices
    M = auto_subset(n, C)
    return set(subset_indices(n, M + recommended_holdout(n, C), 0).tolist())


def test_recommended_constants_unchanged():
    assert RECOMMENDED["warmup_steps"] == 100  # the read counts above assume K = max(100, N / 2B)


def test_reading_a_dataset_shows_progress(capsys):
    zk.predict_training_time(model_of(), LazyRows(500), method="head-aware", subset=60, holdout=20, lr=0.1,
                             batch_size=8, max_steps=4, k=16, paths=2, progress=True)
    err = capsys.readouterr().err
    assert "reading the subset" in err and "reading the holdout" in err
    zk.predict_training_time(model_of(), materialized(500), method="head-aware", subset=60, lr=0.1, batch_size=8,
                             max_steps=4, k=16, paths=2, progress=True)
    assert "reading the subset" not in capsys.readouterr().err  # tensors are indexed, not read
