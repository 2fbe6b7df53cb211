"""zoo_kernels.ranking.rank: the ranking table, shared caches, feature hooks, LGC in the loop, whole-zoo scores."""
import math

import pytest
import torch

from zoo_kernels import scores as S
from zoo_kernels.ranking import DEFAULT_SCORES, RankingTable, ScoreError, rank

N, DIN, C = 48, 6, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: no OpenMP oversubscription



def make_model(seed, width=8, classes=5):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIN, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, classes))


@pytest.fixture
def data(gen):
    x = torch.randn(N, DIN, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y[:C] = torch.arange(C)
    return x, y


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_rank_table(data):
    x, y = data
    models = {"a": make_model(0), "b": make_model(1, width=12), "c": lambda: make_model(2, width=4)}
    table = rank(models, data, scores=list(DEFAULT_SCORES) + ["etran"], progress=False, batch_size=16)
    assert isinstance(table, RankingTable) and len(table) == 3 and table.models == ["a", "b", "c"]
    for s in table.scores:
        vals = table.column(s)
        ranks = table.column("rank_" + s)
        assert all(isinstance(v, float) and math.isfinite(v) for v in vals.values()), s
        assert sorted(ranks.values())[0] == 1
        best = max(vals, key=vals.get)
        assert ranks[best] == 1 and table.best(s) == best
        assert table.ranking(s)[0] == best
        assert all(table[m][s + "_s"] >= 0 for m in table.models)
    assert all(r["features_s"] > 0 for r in table)
    # scores equal the direct calls on the hooked features (the input of the last Linear)
    with torch.no_grad():
        f = models["a"][:4](x)
        logits = models["a"](x)
    assert table["a"]["lfc"] == pytest.approx(S.lfc(f, y), abs=1e-6)
    assert table["a"]["logme"] == pytest.approx(S.logme(f, y), abs=1e-5)
    assert table["a"]["leep"] == pytest.approx(S.leep(torch.softmax(logits.double(), 1), y), abs=1e-6)
    assert table["a"]["nce"] == pytest.approx(S.nce(logits.argmax(1), y), abs=1e-12)
    assert table["b"]["num_params"] == S.model_size(models["b"])
    assert 0 <= table["a"]["etran"] <= 1 and "lda" not in table["a"]  # components are not reported
    md = table.to_markdown()
    assert md.count("\n") == 4 and "| a |" in md and "rank_logme" in md and "etran_s" in md
    ev = table.evaluate({"a": 90.0, "b": 80.0, "c": 85.0})
    assert set(ev) == set(table.scores)
    for s, v in ev.items():  # NaN only for a score that ties every model (e.g. equal probe accuracies on tiny data)
        assert -1 <= v <= 1 or (math.isnan(v) and len(set(table.column(s).values())) == 1), (s, v)
    assert set(table.evaluate({"a": 90.0, "b": 80.0, "c": 85.0}, metric=None)["lfc"]) >= {"weighted_tau", "rel@1"}


def test_knn_krr_strategy_is_the_rank_average(data):
    """The documented selection strategy: the Borda rank-average of knn and krr_loo over the ranked models."""
    models = {n: make_model(i, width=w) for i, (n, w) in enumerate([("a", 8), ("b", 12), ("c", 4), ("d", 6)])}
    table = rank(models, data, scores=["knn_krr", "knn", "krr_loo"], progress=False, batch_size=16)
    knn, krr = table.column("knn"), table.column("krr_loo")
    expect = S.rank_average({"knn": knn, "krr_loo": krr})
    assert table.column("knn_krr") == pytest.approx(expect, abs=1e-12)
    alone = rank(models, data, scores=["knn_krr"], progress=False, batch_size=16)
    assert alone.column("knn_krr") == pytest.approx(expect, abs=1e-12) and "knn" not in alone["a"]


def test_features_are_extracted_once_and_cached(data):
    model = Counting(make_model(3))
    cache = {}
    rank({"m": model}, data, scores=["lfc", "logme", "hscore", "leep", "nce", "knn"], progress=False,
         batch_size=N, cache=cache)
    assert model.calls == 1  # one forward pass over the data serves every score
    assert cache["m"]["features"].shape == (N, 8) and cache["m"]["logits"].shape == (N, 5)
    table = rank({"m": model}, data, scores=["gbc", "transrate"], progress=False, batch_size=N, cache=cache)
    assert model.calls == 1 and table["m"]["features_s"] == 0.0


def test_features_fn_and_batches(data):
    x, y = data
    model = make_model(4)

    def penultimate(m, xb):
        h = m[:4](xb)
        return h, m[4](h)

    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, N, 10)]
    t1 = rank({"m": model}, batches, scores=["lfc", "leep"], features_fn=penultimate, progress=False)
    t2 = rank({"m": model}, data, scores=["lfc", "leep"], progress=False)
    assert t1["m"]["lfc"] == pytest.approx(t2["m"]["lfc"], abs=1e-9)
    assert t1["m"]["leep"] == pytest.approx(t2["m"]["leep"], abs=1e-9)
    # features only: the model's outputs are computed separately for LEEP
    t3 = rank({"m": model}, data, scores=["leep"], features_fn=lambda m, xb: m[:2](xb), progress=False)
    assert t3["m"]["leep"] == pytest.approx(t2["m"]["leep"], abs=1e-9)


def test_lgc_in_rank(data):
    x, y = data
    model = make_model(5).double()
    xd = (x.double(), y)
    # a zero target head: the exact LGC equals LFC of the head's input
    t = rank({"m": model}, xd, scores=["lgc", "lfc"], progress=False,
             score_kwargs={"lgc": {"head": "zero", "method": "exact"}})
    assert t["m"]["lgc"] == pytest.approx(t["m"]["lfc"], abs=1e-6)
    assert t["m"]["gradients_s"] > 0
    # the default: a random C-way head, kronecker sketch through the extension
    t = rank({"m": model}, xd, scores=["lgc"], progress=False, score_kwargs={"lgc": {"k": 256}})
    assert -1 <= t["m"]["lgc"] <= 1
    # the gradient sketch is cached per option set: a second call reuses it, other options recompute
    cache = {}
    t1 = rank({"m": model}, xd, scores=["lgc"], progress=False, cache=cache, score_kwargs={"lgc": {"k": 64}})
    t2 = rank({"m": model}, xd, scores=["lgc"], progress=False, cache=cache, score_kwargs={"lgc": {"k": 64}})
    assert t2["m"]["lgc"] == t1["m"]["lgc"] and t2["m"]["gradients_s"] == 0.0 < t1["m"]["gradients_s"]
    t3 = rank({"m": model}, xd, scores=["lgc"], progress=False, cache=cache,
              score_kwargs={"lgc": {"k": 64, "centering": "double"}})  # same sketch, another correlation
    assert t3["m"]["gradients_s"] == 0.0 and t3["m"]["lgc"] != t1["m"]["lgc"]
    t4 = rank({"m": model}, xd, scores=["lgc"], progress=False, cache=cache, score_kwargs={"lgc": {"k": 128}})
    assert t4["m"]["gradients_s"] > 0
    sketch = [v for key, v in cache["m"].items() if isinstance(key, tuple)][0]
    assert sketch.shape == (N, C, 64)
    assert S.lgc_from_sketch(sketch, y) == pytest.approx(t1["m"]["lgc"], abs=1e-12)
    # the source head, restricted to the last layer: LGC = LFC exactly
    t = rank({"m": model}, xd, scores=["lgc", "lfc"], progress=False,
             score_kwargs={"lgc": {"head": "source", "method": "exact", "layers": ["4"]}})
    assert t["m"]["lgc"] == pytest.approx(t["m"]["lfc"], abs=1e-6)


def test_priors_and_errors(data):
    models = {"a": make_model(0), "b": make_model(1)}
    t = rank(models, data, scores=["source_accuracy", "num_params"], source_accuracy={"a": 70.0, "b": 75.0},
             progress=False)
    assert t.best("source_accuracy") == "b" and t["a"]["rank_source_accuracy"] == 2
    with pytest.raises(ValueError, match="source_accuracy"):
        rank(models, data, scores=["source_accuracy"], progress=False)
    with pytest.raises(ValueError, match="unknown scores"):
        rank(models, data, scores=["lfc", "magic"], progress=False)
    with pytest.raises(TypeError, match="models"):
        rank([make_model(0)], data, progress=False)
    x, y = data
    with pytest.raises(ValueError, match="labels"):
        rank(models, (x, y[:-1]), scores=["lfc"], progress=False)
    with pytest.raises(ValueError, match="only one class"):
        rank(models, (x, torch.zeros(N, dtype=torch.long)), scores=["lfc"], progress=False)
    with pytest.raises(ValueError, match="nn.Linear"):
        rank({"conv": torch.nn.Conv1d(1, 1, 1)}, (x[:, None], y), scores=["lfc"], progress=False)
    with pytest.raises(KeyError):
        t.ranking("lfc")


def test_on_error_nan(data):
    x, y = data
    nan_model = make_model(6)
    with torch.no_grad():
        nan_model[2].weight[0, 0] = float("nan")
    models = {"ok": make_model(7), "bad": nan_model}
    with pytest.raises(ScoreError, match="bad"):
        rank(models, data, scores=["lfc"], progress=False)
    t = rank(models, data, scores=["lfc", "logme"], progress=False, on_error="nan")
    assert math.isnan(t["bad"]["lfc"]) and "NaN" in t["bad"]["errors"]["lfc"]
    assert t["bad"]["rank_lfc"] == 2 and t["ok"]["rank_lfc"] == 1 and "errors" not in t["ok"]


def test_ties_share_a_rank(data):
    m = make_model(8)
    t = rank({"a": m, "b": m}, data, scores=["lfc"], progress=False)
    assert t["a"]["rank_lfc"] == t["b"]["rank_lfc"] == 1
