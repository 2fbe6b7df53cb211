"""benchmarks/linearized_long.py's LinearizedRun: SGD on the head-aware model linearized at w_K, in weight space.

Checked against real torch.optim.SGD where the linearization is exact (features linear in the backbone's weights),
and against an independent simulation with the explicit Jacobian (torch.func.jacrev) where it is not."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.linearized_long import LinearizedRun


class Tiny(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.head = body, nn.Linear(4, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def _data(seed, n=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _real_steps(model, opt, x, y, batches):
    for b in batches:
        loss = F.cross_entropy(model(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _batches(seed, n, B, steps):
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randperm(n, generator=g)[:B] for _ in range(steps)]


def _twins(seed, body, lr, momentum, x, y, warmup):
    """Two identical models with their SGD optimizers, both after the same real warm-up steps."""
    torch.manual_seed(seed)
    model, ref = Tiny(body()).double(), Tiny(body()).double()
    ref.load_state_dict(model.state_dict())
    out = []
    for m in (model, ref):
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
        _real_steps(m, opt, x, y, warmup)
        out += [m, opt]
    return out


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_linear_backbone_is_real_sgd(seed, momentum):
    """A backbone whose features are linear in its weights: the linearized run is the network, so K real steps
    then the linearized steps must equal real SGD throughout (momentum buffers carried)."""
    x, y = _data(seed)
    batches = _batches(seed, len(x), 8, 12)
    model, opt, ref, ref_opt = _twins(seed, lambda: nn.Linear(5, 4), 0.2, momentum, x, y, batches[:4])
    lin = LinearizedRun(model, opt, x, y, feature_norm="linear", chunk=7)
    for b in batches[4:]:
        lin.step(b)
        _real_steps(ref, ref_opt, x, y, [b])
        with torch.no_grad():
            out = ref(x)
        want = (float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean()))
        got = lin.evaluate()
        assert got[0] == pytest.approx(want[0], rel=1e-10) and got[1] == want[1]


@pytest.mark.parametrize("feature_norm, order", [("linear", 1), ("fixed", 1), ("fixed", 2), ("fixed", "2v")])
def test_nonlinear_backbone_matches_explicit_jacobian(seed, feature_norm, order):
    """A tanh backbone: the run equals SGD on φ_K + J (w − w_K) (order 2: + ½ H[w − w_K, w − w_K]; "2v", along a
    unit direction v only: + a H[v, Δ] − ½ a² H[v, v] with a = ⟨v, Δ⟩) with J and H from torch.func.jacrev and the
    gradient from autograd, simulated directly (head exact, fixed norm ‖φ_K(x)‖ φ/‖φ‖ when asked, torch's momentum
    recursion with the carried buffers)."""
    torch.manual_seed(seed)
    x, y = _data(seed)
    model = Tiny(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))).double()
    lr, mom = 0.3, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom)
    batches = _batches(seed, len(x), 6, 10)
    _real_steps(model, opt, x, y, batches[:3])
    # the independent reference, from the model at w_K
    names = [n for n, _ in model.body.named_parameters()]
    wK = {n: p.detach().clone() for n, p in model.body.named_parameters()}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model.body, p, (x,)))(wK)  # {name: (N, D, *shape)}
    J = torch.cat([jac[n].reshape(len(x), 4, -1) for n in names], -1)  # (N, D, P)
    sizes = [wK[n].numel() for n in names]
    flat = lambda v: {n: t.reshape(wK[n].shape) for n, t in zip(names, torch.split(v, sizes))}  # noqa: E731
    H = torch.func.jacrev(torch.func.jacrev(lambda v: torch.func.functional_call(model.body, flat(v), (x,))))(
        torch.cat([wK[n].reshape(-1) for n in names])) if order in (2, "2v") else None  # (N, D, P, P)
    v = torch.randn(J.shape[-1], dtype=torch.float64) if order == "2v" else None
    phiK = model.features(x).detach()
    nK = phiK.norm(dim=1, keepdim=True)
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in [model.head.weight, model.head.bias]
            + list(model.body.parameters())]
    W, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    delta = torch.zeros(J.shape[-1], dtype=torch.float64)
    vel = [bufs[0], bufs[1], torch.cat([v.reshape(-1) for v in bufs[2:]])]

    def ref_loss(W, b, delta, idx):
        z = phiK[idx] + J[idx] @ delta
        if order == 2:
            z = z + 0.5 * torch.einsum("ndpq,p,q->nd", H[idx], delta, delta)
        if order == "2v":
            u = v / v.norm()
            a = u @ delta
            z = z + a * torch.einsum("ndpq,p,q->nd", H[idx], u, delta) - 0.5 * a * a * torch.einsum(
                "ndpq,p,q->nd", H[idx], u, u)
        phi = z * (nK[idx] / z.norm(dim=1, keepdim=True)) if feature_norm == "fixed" else z
        return F.cross_entropy(phi @ W.T + b, y[idx])

    lin = LinearizedRun(model, opt, x, y, feature_norm=feature_norm, chunk=5, order=2 if order == "2v" else order,
                        along=v)
    for bt in batches[3:]:
        lin.step(bt)
        params = [W.requires_grad_(True), b.requires_grad_(True), delta.requires_grad_(True)]
        grads = torch.autograd.grad(ref_loss(W, b, delta, bt), params)
        vel = [mom * v + g for v, g in zip(vel, grads)]
        W, b, delta = (p.detach() - lr * v for p, v in zip(params, vel))
        with torch.no_grad():
            want = float(ref_loss(W, b, delta, torch.arange(len(x))))
        assert lin.evaluate()[0] == pytest.approx(want, rel=1e-9)


def test_relinearized_every_step_is_real_sgd(seed):
    """Re-linearized at its own weights after every step, the linearized run takes the network's own gradient at
    the network's own features: it must be real SGD, for a nonlinear backbone too. (With the fixed feature norm it
    is not: that model drops the gradient's radial part.)"""
    x, y = _data(seed)
    batches = _batches(seed, len(x), 6, 10)
    body = lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))  # noqa: E731
    model, opt, ref, ref_opt = _twins(seed, body, 0.3, 0.9, x, y, batches[:3])
    lin = LinearizedRun(model, opt, x, y, feature_norm="linear", chunk=5)
    for bt in batches[3:]:
        lin.step(bt)
        _real_steps(ref, ref_opt, x, y, [bt])
        with torch.no_grad():
            want = float(F.cross_entropy(ref(x), y))
        linearized = lin.evaluate()[0]  # the features φ_K + J Δ: not the network's (the test can tell them apart)
        assert linearized != pytest.approx(want, rel=1e-6)
        lin.relinearize()
        assert lin.evaluate()[0] == pytest.approx(want, rel=1e-9)


def test_along_direction(seed):
    """--along: "warmup" is w_K − w_0 of the backbone, "real" the displacement of real SGD continued from w_K (the
    model and its optimizer untouched)."""
    from benchmarks.linearized_long import along_direction
    x, y = _data(seed)
    batches = _batches(seed, len(x), 8, 9)
    model, opt, ref, ref_opt = _twins(seed, lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh()), 0.2, 0.9, x, y, [])
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.body.parameters()])  # noqa: E731
    w_0 = flat(model)
    _real_steps(model, opt, x, y, batches[:4])
    _real_steps(ref, ref_opt, x, y, batches[:4])
    w_K = flat(model)
    assert torch.equal(along_direction("warmup", model, opt, w_0, x, y, batches[4:]), w_K - w_0)
    got = along_direction("real", model, opt, w_0, x, y, batches[4:])
    _real_steps(ref, ref_opt, x, y, batches[4:])
    assert torch.allclose(got, flat(ref) - w_K, rtol=0, atol=1e-12) and got.norm() > 0
    assert torch.equal(flat(model), w_K)


def test_along_linear_direction(seed):
    """--along linear: the displacement of LinearizedRun (order 1) over the batches; linear:1 that of the
    second-order model along it; the model and its optimizer stay untouched."""
    from benchmarks.linearized_long import along_direction
    x, y = _data(seed)
    batches = _batches(seed, len(x), 8, 8)
    model, opt, _, _ = _twins(seed, lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh()), 0.2, 0.9, x, y, batches[:3])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = LinearizedRun(model, opt, x, y, "fixed")
    for b in batches[3:]:
        ref.step(b)
    v0 = torch.cat([d.detach().flatten() for d in ref.delta])
    assert torch.equal(along_direction("linear", model, opt, None, x, y, batches[3:]), v0)
    ref2 = LinearizedRun(model, opt, x, y, "fixed", order=2, along=v0)
    for b in batches[3:]:
        ref2.step(b)
    v1 = along_direction("linear:1", model, opt, None, x, y, batches[3:])
    assert torch.equal(v1, torch.cat([d.detach().flatten() for d in ref2.delta])) and not torch.equal(v1, v0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_rescore_takes_real_targets_from_the_cached_run(tmp_path, monkeypatch):
    """--rescore --real-from-cache replaces a row's real targets with those of this machine's cached run, and
    refuses a cached run whose loss at the replayed step is not the replayed one."""
    import json

    import numpy as np

    import benchmarks.linearized_long as ll
    t = np.arange(0, 601, 10)
    loss = 2.0 * np.exp(-t / 100.0)
    acc = np.minimum(1.0, t / 300.0)
    monkeypatch.setattr(ll, "task_data", lambda task: (3, None, None))
    monkeypatch.setattr(ll, "cached_real_run", lambda *a: (t, loss, acc, 1.0))
    T = {"loss<=0.5L0": 50.0, "loss<=0.25L0": 120.0, "loss<=0.1L0": 250.0, "loss<=0.0333L0": 400.0, "acc>=0.9": 270.0}
    row = {"model": "m", "task": "t", "lr": 0.1, "batch": 8, "momentum": 0.9, "steps": 600, "seconds": 1.0,
           "real": dict(T), "linearized": dict(T), "predicted": dict(T),
           "check": {"step": 90, "replayed": float(loss[9]), "real": float(loss[9])}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"meta": {"K": 100}, "rows": [row]}))
    ll.main(["--rescore", str(path), "--real-from-cache"])
    got = json.loads(path.read_text())["rows"][0]
    assert got["real_compare_file"] == T
    assert got["real"]["loss<=0.5L0"] == pytest.approx(100 * np.log(2), abs=0.5)
    assert got["real"]["acc>=0.9"] == pytest.approx(270.0, abs=0.5)
    row["check"]["replayed"] *= 1.001
    path.write_text(json.dumps({"meta": {"K": 100}, "rows": [row]}))
    with pytest.raises(SystemExit, match="not the one the linearized run replayed"):
        ll.main(["--rescore", str(path), "--real-from-cache"])


def test_along_linear_subset_direction(seed):
    """--along linear-subset: the linearized model on the predictor's subset and batch size; with few samples per
    class the subset is all of them and the batch size stays, so it is LinearizedRun over the subset's own stream."""
    from benchmarks.linearized_long import along_direction
    from zoo_kernels.zoo.finetune import _batches as stream
    x, y = _data(seed, n=30)
    batches = _batches(seed, len(x), 8, 7)
    model, opt, _, _ = _twins(seed, lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh()), 0.2, 0.9, x, y, batches[:2])
    ref = LinearizedRun(model, opt, x, y, "fixed")
    for b in stream(len(x), 8, 5, torch.Generator().manual_seed(1)):
        ref.step(b)
    got = along_direction("linear-subset", model, opt, None, x, y, batches[2:])
    assert torch.equal(got, torch.cat([d.detach().flatten() for d in ref.delta]))
