"""Samples: the training set of a prediction, read only where the prediction needs it.

A prediction touches few of the N samples: the subset (M) and holdout (H) rows it integrates on, the K·B rows of a
warm-up's real steps and a few batches that time a real step. `Samples` wraps (inputs, labels) tensors or a
map-style torch Dataset and reads those rows only, so a Dataset too large for memory (image files, rows of a large
array file) costs the rows read, not N. Tensors are checked whole up front; a Dataset is checked on every row read
(finite inputs, integer labels >= 0). `Samples(dataset, num_workers=w)` reads with w DataLoader worker processes
(the subset in chunks, a warm-up's batches ahead), as real training would.
"""
import torch
from tqdm.auto import tqdm

__all__ = ["Samples", "as_samples", "all_finite"]

_CHECK_CHUNK = 1 << 16  # rows per finiteness check of in-memory inputs
_TAKE_CHUNK = 256  # rows per worker task when take() reads with workers


class Samples:
    """Random access to N (input, label) samples: `take(indices)`, `batches(index_lists)`, `len()`.

    data: an (inputs, labels) pair of tensors, or a map-style Dataset whose items are (input, label) pairs (an
    IterableDataset has no random access and is refused). A Dataset's labels are read from its `targets` attribute
    when it has one of length N (torchvision's convention), else only with the rows read.
    """

    def __init__(self, data, num_workers=0, *, _checked=False):  # _checked: tensors the caller has checked (the CLI)
        if not (isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0):
            raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
        self.num_workers, self.dataset, self.x, self._classes, self._kept = num_workers, None, None, None, {}
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            self.x, self.labels = data
            if self.labels.dim() != 1 or len(self.x) != len(self.labels):
                raise ValueError(f"`data` must hold one label per input: inputs {tuple(self.x.shape)}, labels "
                                 f"{tuple(self.labels.shape)}")
            if not _checked:
                _check_labels(self.labels)
                if not all_finite(self.x):
                    raise ValueError("`data` inputs contain NaN or Inf")
            self.n = len(self.x)
        elif isinstance(data, torch.utils.data.IterableDataset):
            raise TypeError("`data` is an IterableDataset, which has no random access: pass a map-style Dataset "
                            "(__len__ and __getitem__) or (inputs, labels) tensors")
        elif isinstance(data, torch.utils.data.Dataset):
            try:
                self.n = len(data)
            except TypeError as e:
                raise TypeError(f"`data` ({type(data).__name__}) must have a length (__len__)") from e
            self.dataset, self.labels = data, _targets(data, self.n)
        else:
            raise TypeError("`data` must be an (inputs, labels) pair of tensors or a torch Dataset of (input, label)")

    def __len__(self):
        return self.n

    def take(self, idx, progress=False, desc="reading samples", keep=False):
        """(inputs, labels) of the samples `idx` (a 1-D index tensor or list), labels as int64; a Dataset's rows
        are read and checked (progress=True: a progress bar over them). keep=True: a Dataset's rows are kept and a
        later take(the same idx, keep=True) reads nothing (a warm start's subset serves the warm-up and w_K)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.dataset is None:
            return self.x[idx], self.labels[idx.to(self.labels.device)].long()
        if keep:
            key = (len(idx), hash(idx.numpy().tobytes()))
            if key not in self._kept:
                self._kept[key] = self.take(idx, progress, desc)
            return self._kept[key]
        if self.num_workers and len(idx) > 1:  # chunks read by the workers
            chunks = list(idx.split(_TAKE_CHUNK))
            parts = list(tqdm(self.batches(chunks), total=len(chunks), desc=desc, unit="chunk", disable=not progress))
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rows = tqdm(idx.tolist(), desc=desc, unit="row", disable=not progress or len(idx) < 2)
        return _stack([(i, self.dataset[i]) for i in rows])

    def batches(self, index_lists):
        """take(b) for each b of `index_lists` (a finite iterable), in order; with num_workers > 0 a Dataset's
        batches are read ahead by a DataLoader's worker processes."""
        if self.dataset is None or not self.num_workers:
            yield from (self.take(b) for b in index_lists)
            return
        loader = torch.utils.data.DataLoader(_Indexed(self.dataset), batch_sampler=[b.tolist() for b in index_lists],
                                             num_workers=self.num_workers, collate_fn=_stack)
        yield from loader

    def num_classes(self, model):
        """The class count: max label + 1 where the labels are known, else `model`'s output width on sample 0."""
        if self.labels is not None:
            return int(self.labels.max()) + 1 if len(self.labels) else 0
        if self._classes is None:  # read once
            x0, _ = self.take([0])
            device, mode = next(model.parameters()).device, model.training
            with torch.no_grad():
                self._classes = int(model.eval()(x0.to(device)).reshape(1, -1).shape[1])
            model.train(mode)
        return self._classes


def all_finite(x):
    """No NaN or Inf in `x` (True for integer tensors), checked in chunks of rows: no mask the size of x."""
    return not x.is_floating_point() or all(torch.isfinite(x[s:s + _CHECK_CHUNK]).all()
                                            for s in range(0, len(x), _CHECK_CHUNK))


def as_samples(data):
    """`data` as Samples (a Samples is returned as it is)."""
    return data if isinstance(data, Samples) else Samples(data)


class _Indexed(torch.utils.data.Dataset):
    """(index, item) of a dataset, so that a DataLoader's batches can name the row of a bad item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return i, self.dataset[i]


def _stack(items):
    """(inputs, labels) from [(index, (input, label)), ...]; checks each row."""
    xs, ys = [], []
    for i, item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"`data`[{i}] must be an (input, label) pair, got {type(item).__name__}")
        x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"`data` inputs contain NaN or Inf (sample {i})")
        if y.numel() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or int(y) < 0:
            raise ValueError(f"`data` labels must be integer class labels >= 0, got {item[1]!r} (sample {i})")
        xs.append(x), ys.append(y.reshape(()))
    return torch.stack(xs), torch.stack(ys).long()


def _check_labels(labels):
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError("`data` labels must be integer class labels")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"`data` labels must be integer class labels >= 0, got {int(labels.min())}")


def _targets(dataset, n):
    """A Dataset's `targets` as an int64 tensor when it has N integer ones, else None."""
    t = getattr(dataset, "targets", None)
    if t is None:
        return None
    try:
        t = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.dim() != 1 or len(t) != n:
        return None
    _check_labels(t)
    return t.long()
