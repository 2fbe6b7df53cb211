"""zoo-kernels CLI (rank, predict-time, bench) through main([...]) with tiny settings, its bad-input errors, and the
corrections of zoo_kernels.calibrate that `predict-time --method head-aware` uses."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from conftest import bilinear_problem as _bilinear_problem
from zoo_kernels import cli
from zoo_kernels.calibrate import HeadAwarePredictor, calibrate_time, fit_time_scale, rescale_curve
from zoo_kernels.dynamics import _batch_stream
from zoo_kernels.predict import Prediction
from zoo_kernels.zoo import nets

# a MiniZoo task small enough for tests: texture_orient, 2 shots x 8 classes = 16 images
TINY = ["--task", "texture_orient", "--shots", "2", "--no-progress", "--threads", "1"]
PRED = ["predict-time", "--model", "convnet_latin", *TINY, "--max-steps", "6", "--no-step-time", "--paths", "1"]


def run(capsys, argv):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_json(capsys, argv):
    rc, out, err = run(capsys, argv + ["--format", "json"])
    assert rc == 0, err
    return json.loads(out)


# ------------------------------------------------------------------------------------------------ predict-time

@pytest.mark.parametrize("method, k", [("sketch", "64"), ("exact", "64"), ("head-aware", "32")])
def test_predict_time_json(capsys, method, k):
    obj = run_json(capsys, PRED + ["--method", method, "--k", k, "--lr", "0.01", "--batch-size", "8",
                                   "--momentum", "0.9", "--target", "fraction=0.9", "--target", "accuracy=0.5",
                                   "--curves"])
    assert obj["num_samples"] == 16 and obj["num_classes"] == 8 and obj["method"] == method
    assert len(obj["loss_curve"]) == 7 and len(obj["accuracy_curve"]) == 7
    assert [t["kind"] for t in obj["targets"]] == ["fraction", "accuracy"]
    assert obj["hyper_parameters"]["sampling"] == "stream"  # the MiniZoo recipe's minibatches
    assert obj["step_seconds"] is None and obj["prediction_seconds"] > 0
    assert ("299 %" if method != "head-aware" else "50 %") in obj["validation"]  # what the long runs measured
    for t in obj["targets"]:
        assert t["steps"] is None or 0 <= t["steps"] <= 6
        if t["steps"] is not None:
            assert t["epochs"] == pytest.approx(t["steps"] * 8 / 16)


@pytest.mark.parametrize("warmup", ["0", "3"])  # multiples of --eval-every 3: [::3] is measured
def test_predict_time_sketch_method(capsys, warmup):
    args = PRED + ["--method", "head-aware", "--k", "32", "--lr", "0.01", "--batch-size", "8", "--curves",
                   "--warmup-steps", warmup]
    kron = run_json(capsys, args + ["--sketch-method", "kronecker"])
    dense = run_json(capsys, args)
    assert kron["sketch_method"] == "kronecker" and dense["sketch_method"] == "dense"
    assert kron["loss_curve"][0] == pytest.approx(dense["loss_curve"][0], rel=1e-9)  # the same start, another sketch
    assert kron["loss_curve"][1:] != dense["loss_curve"][1:]
    rc, _, err = run(capsys, args + ["--sketch-method", "gaussian"])
    assert rc == 2 and "--sketch-method" in err
    sparse = run_json(capsys, args + ["--eval-every", "3"])
    assert sparse["loss_curve"][::3] == pytest.approx(dense["loss_curve"][::3], rel=1e-9)  # measured points
    rc, _, err = run(capsys, args + ["--eval-every", "0"])
    assert rc == 2 and "eval_every" in err


def test_predict_time_auto_subset(capsys):
    obj = run_json(capsys, PRED + ["--k", "32", "--lr", "0.01", "--batch-size", "4", "--subset", "auto",
                                   "--warmup-steps", "2"])
    assert obj["subset"] == 16  # 20 per class of 8 classes is more than the 16 samples: all of them
    rc, _, err = run(capsys, PRED + ["--lr", "0.01", "--batch-size", "4", "--subset", "most"])
    assert rc == 2 and "--subset" in err and "'auto' or an int" in err


def test_predict_time_feature_rank(capsys):
    obj = run_json(capsys, PRED + ["--method", "head-aware", "--k", "32", "--feature-rank", "4", "--lr", "0.01",
                                   "--batch-size", "8", "--target", "fraction=0.9"])
    assert obj["method"] == "head-aware" and obj["prediction_seconds"] > 0
    rc, _, err = run(capsys, PRED + ["--method", "sketch", "--feature-rank", "4", "--lr", "0.01", "--batch-size", "8"])
    assert rc == 2 and "--feature-rank applies to --method head-aware only" in err
    rc, _, err = run(capsys, PRED + ["--method", "head-aware", "--feature-rank", "999", "--lr", "0.01",
                                     "--batch-size", "8"])
    assert rc == 2 and "`feature_rank` must be None or an int in [1, 64]" in err


def test_predict_time_warmup_and_feature_norm(capsys):
    base = PRED + ["--k", "32", "--lr", "0.01", "--batch-size", "8", "--momentum", "0.9", "--curves"]
    obj = run_json(capsys, base + ["--warmup-steps", "3", "--feature-norm", "fixed"])
    assert obj["warmup_steps"] == 3 and obj["feature_norm"] == "fixed" and len(obj["loss_curve"]) == 7
    assert obj["step_seconds"] > 0  # measured on the 3 real warm-up steps
    fixed = run_json(capsys, base + ["--feature-norm", "fixed"])
    free = run_json(capsys, base)
    assert fixed["loss_curve"][0] == free["loss_curve"][0] and fixed["loss_curve"][-1] != free["loss_curve"][-1]
    for extra, match in [(["--method", "sketch", "--warmup-steps", "2"], "apply to --method head-aware only"),
                         (["--warmup-steps", "2", "--schedule", "cosine"], "not with --recommend or a schedule"),
                         (["--warmup-steps", "6"], "`max_steps` must be an int > warmup_steps"),
                         (["--warmup-steps", "-1"], "`warmup_steps` must be an int >= 0")]:
        rc, _, err = run(capsys, base + extra)
        assert rc == 2 and match in err, err


def test_predict_time_recommended_method(capsys):
    base = PRED + ["--lr", "0.01", "--batch-size", "8", "--momentum", "0.9"]
    for extra, match in [(["--k", "32"], "--method recommended sets --k itself"),
                         (["--feature-norm", "fixed", "--subset", "8"], "sets --feature-norm, --subset itself"),
                         ([], "--max-steps must be an int above"),
                         (["--max-steps", "110", "--recommend", "--batch-sizes", "4"], "not with --recommend or a schedule")]:
        rc, _, err = run(capsys, base + ["--method", "recommended"] + extra)
        assert rc == 2 and match in err, err
    obj = run_json(capsys, base + ["--method", "recommended", "--max-steps", "110", "--curves"])
    assert obj["method"] == "recommended" and obj["warmup_steps"] == 100 and obj["feature_norm"] == "fixed"
    assert obj["sketch_method"] == "kronecker" and obj["k"] == 512 and len(obj["loss_curve"]) == 111
    assert "median error" in obj["validation"]
    assert obj["holdout"] == 0 and not obj["loss_read_off_holdout"]  # M = N on 2 shots: no holdout rows
    assert obj["scope_warning"] is None  # 100 steps cover many epochs of these few samples


def test_predict_time_recommended_reads_the_loss_off_its_holdout(capsys):
    argv = ["predict-time", "--model", "convnet_latin", "--task", "texture_orient", "--shots", "25", "--no-progress",
            "--threads", "1", "--max-steps", "130", "--no-step-time", "--paths", "1", "--lr", "0.01",
            "--batch-size", "8", "--momentum", "0.9", "--method", "recommended", "--target", "fraction=0.999"]
    obj = run_json(capsys, argv)  # N = 200, C = 8: M = 160, so H = 40
    assert obj["subset"] == 160 and obj["holdout"] == 40 and obj["loss_read_off_holdout"]
    assert "holdout_gap" in obj["targets"][0]
    rc, out, _ = run(capsys, argv)
    assert rc == 0 and "holdout H=40, loss read off it" in out and "memorized" in out
    assert "warning:" not in out


def test_predict_time_recommended_warmup_is_half_an_epoch(capsys, monkeypatch):
    """--method recommended runs max(100, ceil(N / 2B)) real steps, and warns beyond the largest N it was tested on."""
    from zoo_kernels import predict as P
    argv = ["predict-time", "--model", "convnet_latin", "--task", "texture_orient", "--shots", "50", "--no-progress",
            "--threads", "1", "--max-steps", "200", "--no-step-time", "--paths", "1", "--lr", "0.01",
            "--batch-size", "1", "--momentum", "0.9", "--method", "recommended", "--target", "fraction=0.999"]
    rc, _, err = run(capsys, argv)  # N = 400, B = 1: K = 200
    assert rc == 2 and "--method recommended runs the first 200 steps for real" in err, err
    argv[argv.index("--max-steps") + 1] = "205"
    monkeypatch.setattr(P, "RECOMMENDED_TESTED_N", 300)
    obj = run_json(capsys, argv)
    assert obj["warmup_steps"] == 200 and "tested on up to 300 samples" in obj["scope_warning"]
    rc, out, _ = run(capsys, argv)
    assert rc == 0 and "warning: the recommended mode was tested on up to 300 samples; on these 400" in out, out


def test_predict_time_table_seconds_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    rc, out, err = run(capsys, ["predict-time", "--model", "convnet_latin", *TINY, "--max-steps", "4", "--paths", "1",
                                "--method", "sketch", "--k", "32", "--lr", "0.05", "--batch-size", "4",
                                "--target", "fraction=0.99", "--plot", str(png)])
    assert rc == 0, err
    assert "| target | steps | epochs | seconds |" in out and "one real SGD step" in out
    assert png.stat().st_size > 1000


def test_predict_time_verify(capsys, tmp_path):
    obj = run_json(capsys, PRED + ["--method", "sketch", "--k", "32", "--lr", "0.01", "--batch-size", "8",
                                   "--momentum", "0.9", "--target", "fraction=0.999", "--verify"])
    assert obj["verify"]["train_seconds"] > 0
    row = obj["targets"][0]
    assert "real_steps" in row


def test_predict_time_recommend(capsys):
    obj = run_json(capsys, PRED + ["--method", "sketch", "--k", "32", "--recommend", "--lrs", "0.01", "0.1",
                                   "--batch-sizes", "4", "8", "--by", "steps", "--target", "fraction=0.99"])
    rows = obj["recommend"]["rows"]
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    reached = [r["steps"] for r in rows if r["steps"] is not None]
    assert reached == sorted(reached)
    assert obj["recommend"]["by"] == "steps"


def test_predict_time_user_checkpoint_and_data(capsys, tmp_path):
    torch.manual_seed(0)
    model = nets.build("convnet", 5, seed=1)
    ckpt = tmp_path / "mine.pt"
    nets.save_checkpoint(str(ckpt), model, "convnet", {"note": "test"})
    sd = tmp_path / "plain.pt"
    torch.save(model.state_dict(), sd)
    data = tmp_path / "data.pt"
    g = torch.Generator().manual_seed(0)
    torch.save({"inputs": torch.rand(12, 1, 32, 32, generator=g), "labels": torch.arange(12) % 3}, data)
    common = ["predict-time", "--data", str(data), "--max-steps", "3", "--no-step-time", "--paths", "1",
              "--method", "sketch", "--k", "32", "--lr", "0.01", "--batch-size", "4", "--no-progress"]
    obj = run_json(capsys, common + ["--checkpoint", str(ckpt)])
    assert obj["num_classes"] == 3 and obj["hyper_parameters"]["sampling"] == "epoch"
    rc, _, err = run(capsys, common + ["--checkpoint", str(sd)])
    assert rc == 2 and "--arch" in err
    obj = run_json(capsys, common + ["--checkpoint", str(sd), "--arch", "convnet"])
    assert obj["num_samples"] == 12
    npz = tmp_path / "data.npz"
    np.savez(npz, x=np.random.rand(10, 1, 32, 32).astype(np.float32), y=np.arange(10) % 2)
    obj = run_json(capsys, common[:1] + ["--data", str(npz)] + common[3:] + ["--checkpoint", str(ckpt)])
    assert obj["num_samples"] == 10 and obj["num_classes"] == 2


@pytest.mark.parametrize("extra, match", [
    (["--lr", "0", "--batch-size", "4"], "--lr must be > 0"),
    (["--lr", "-0.1", "--batch-size", "4"], "--lr must be > 0"),
    (["--lr", "nan", "--batch-size", "4"], "--lr must be finite"),
    (["--batch-size", "4"], "--lr must be > 0"),
    (["--lr", "0.1", "--batch-size", "17"], "--batch-size must be in \\[1, N=16\\]"),
    (["--lr", "0.1", "--batch-size", "0"], "--batch-size must be in"),
    (["--lr", "0.1", "--batch-size", "4", "--loss", "hinge"], "--loss must be one of"),
    (["--lr", "0.1", "--batch-size", "4", "--target", "fraction=2"], "fraction must be in"),
    (["--lr", "0.1", "--batch-size", "4", "--target", "speed=3"], "KIND=VALUE"),
    (["--lr", "0.1", "--batch-size", "4", "--momentum", "1.0"], "`momentum` must be in \\[0, 1\\)"),
    (["--lr", "0.1", "--batch-size", "4", "--subset", "40"], "--subset must be .auto. or in"),
    (["--lr", "0.1", "--batch-size", "4", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["--lr", "0.1", "--batch-size", "4", "--nesterov"], "`nesterov` needs momentum"),
    (["--recommend", "--lrs", "0.1", "-1"], "--lrs must all be > 0"),
])
def test_predict_time_bad_input(capsys, extra, match):
    rc, out, err = run(capsys, PRED + ["--method", "sketch", "--k", "16"] + extra)
    assert rc == 2 and out == ""
    assert "error" in err
    import re
    assert re.search(match, err), err


def test_predict_time_divergence_is_a_clear_error(capsys):
    rc, _, err = run(capsys, PRED + ["--method", "exact", "--loss", "mse", "--lr", "1e8", "--batch-size", "16",
                                     "--max-steps", "60"])
    assert rc == 2 and "diverge" in err and "lower --lr" in err.lower()


def test_bad_data_files(capsys, tmp_path):
    ckpt = tmp_path / "m.pt"
    nets.save_checkpoint(str(ckpt), nets.build("convnet", 3, seed=0), "convnet", {})
    x = torch.rand(8, 1, 32, 32)
    x[2, 0, 5, 5] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save({"x": x, "y": torch.arange(8) % 2}, nan)
    base = ["predict-time", "--checkpoint", str(ckpt), "--lr", "0.1", "--batch-size", "4", "--max-steps", "2",
            "--no-step-time", "--no-progress"]
    rc, _, err = run(capsys, base + ["--data", str(nan)])
    assert rc == 2 and "NaN" in err
    rc, _, err = run(capsys, ["rank", "--data", str(nan), "--checkpoint", str(ckpt), "--no-progress"])
    assert rc == 2 and "NaN" in err
    mism = tmp_path / "mism.pt"
    torch.save({"x": torch.rand(8, 1, 32, 32), "y": torch.arange(7)}, mism)
    rc, _, err = run(capsys, base + ["--data", str(mism)])
    assert rc == 2 and "same number of samples" in err
    rc, _, err = run(capsys, base + ["--data", str(tmp_path / "missing.pt")])
    assert rc == 2 and "not found" in err
    # a pickled module is refused by weights_only loading
    pick = tmp_path / "module.pt"
    torch.save(nn.Linear(3, 2), pick)
    rc, _, err = run(capsys, ["predict-time", "--checkpoint", str(pick), *TINY, "--lr", "0.1", "--batch-size", "4"])
    assert rc == 2 and "weights-only" in err
    rc, _, err = run(capsys, ["predict-time", *TINY, "--lr", "0.1", "--batch-size", "4"])
    assert rc == 2 and "--model" in err
    rc, _, err = run(capsys, ["predict-time", "--model", "nope_latin", *TINY, "--lr", "0.1", "--batch-size", "4"])
    assert rc == 2 and "unknown MiniZoo model" in err
    rc, _, err = run(capsys, ["predict-time", "--model", "convnet_latin", "--task", "nope", "--lr", "0.1",
                              "--batch-size", "4"])
    assert rc == 2 and "unknown task" in err


def test_predict_time_on_a_dataset_reads_only_the_rows_it_needs(capsys):
    import cli_datasets
    args = ["predict-time", "--model", "convnet_latin", "--no-progress", "--threads", "1", "--max-steps", "6",
            "--no-step-time", "--paths", "1", "--lr", "0.05", "--batch-size", "4", "--momentum", "0.9",
            "--subset", "6", "--holdout", "2"]
    a = run_json(capsys, args + ["--task", "texture_orient", "--shots", "2"])
    cli_datasets.READS.clear()
    b = run_json(capsys, args + ["--dataset", "cli_datasets:with_targets"])
    assert len(cli_datasets.READS) == 6 + 2  # the subset and the holdout rows, nothing else
    assert b["num_samples"] == a["num_samples"] and b["num_classes"] == a["num_classes"]
    assert [t["steps"] for t in b["targets"]] == [t["steps"] for t in a["targets"]]
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-9)
    c = run_json(capsys, args + ["--dataset", "cli_datasets:without_targets", "--num-classes",
                                 str(a["num_classes"])])
    assert c["final_loss"] == pytest.approx(a["final_loss"], rel=1e-9)
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:without_targets"])
    assert rc == 2 and "no `targets`" in err and "--num-classes" in err
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:not_a_dataset"])
    assert rc == 2 and "--dataset cli_datasets:not_a_dataset" in err and "torch Dataset" in err
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:nope"])
    assert rc == 2 and "--dataset cli_datasets:nope" in err
    rc, _, err = run(capsys, args + ["--dataset", "no_colon"])
    assert rc == 2 and "package.module:function" in err
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:with_targets", "--task", "texture_orient"])
    assert rc == 2 and "exactly one of" in err
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:with_targets", "--verify"])
    assert rc == 2 and "not with --dataset" in err
    d = run_json(capsys, args + ["--dataset", "cli_datasets:with_targets", "--workers", "2"])
    assert d["final_loss"] == pytest.approx(a["final_loss"], rel=1e-9)
    rc, _, err = run(capsys, args + ["--task", "texture_orient", "--workers", "2"])
    assert rc == 2 and "give --dataset" in err
    rc, _, err = run(capsys, args + ["--dataset", "cli_datasets:with_targets", "--workers", "-1"])
    assert rc == 2 and "`num_workers` must be an int >= 0" in err


def test_data_files_are_memory_mapped_and_legacy_ones_still_load(tmp_path):
    x, y = torch.rand(9, 1, 4, 4), torch.arange(9) % 3
    new, old = tmp_path / "new.pt", tmp_path / "old.pt"
    torch.save({"x": x, "y": y}, new)
    torch.save({"x": x, "y": y}, old, _use_new_zipfile_serialization=False)  # cannot be mapped
    for path in (new, old):
        a, b = cli.load_data_file(str(path))
        assert torch.equal(a, x) and torch.equal(b, y)
    mapped, _ = cli.load_data_file(str(new))
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as fh:
            assert str(new) in fh.read()  # the file is mapped, not read
    assert torch.equal(mapped, x)


# ------------------------------------------------------------------------------------------------ rank

def test_rank_minizoo_json_and_table(capsys):
    obj = run_json(capsys, ["rank", *TINY, "--models", "convnet_latin", "convnet_textures", "resnet_multi",
                            "--scores", "logme", "lfc"])
    assert obj["num_samples"] == 16 and obj["by"] == "logme"
    assert [r["rank"] for r in obj["rows"]] == [1, 2, 3]
    vals = [r["logme"] for r in obj["rows"]]
    assert vals == sorted(vals, reverse=True) and obj["best"] == obj["rows"][0]["model"]
    rc, out, err = run(capsys, ["rank", *TINY, "--models", "convnet_latin", "convnet_textures", "--scores", "lfc"])
    assert rc == 0 and "| rank | model | lfc |" in out and "best by lfc" in out


def test_rank_checkpoints(capsys, tmp_path):
    paths = []
    for i, arch in enumerate(("convnet", "resnet")):
        p = tmp_path / f"{arch}_{i}.pt"
        nets.save_checkpoint(str(p), nets.build(arch, 4, seed=i), arch, {})
        paths.append(str(p))
    obj = run_json(capsys, ["rank", *TINY, "--checkpoint", *paths, "--scores", "lfc", "leep"])
    assert {r["model"] for r in obj["rows"]} == {"convnet_0", "resnet_1"}


@pytest.mark.parametrize("extra, match", [
    (["--scores", "bogus"], "unknown scores"), (["--scores", "lfc", "--by", "logme"], "--by"),
    (["--models", "nope_latin"], "unknown MiniZoo models"),
])
def test_rank_bad_input(capsys, extra, match):
    rc, _, err = run(capsys, ["rank", *TINY] + extra)
    assert rc == 2 and match in err


def test_rank_needs_one_data_source(capsys):
    rc, _, err = run(capsys, ["rank", "--no-progress"])
    assert rc == 2 and "exactly one of --task" in err


# ------------------------------------------------------------------------------------------------ bench, help

def test_bench_dry_run(capsys):
    rc, _, err = run(capsys, ["bench", "--quick", "--suite", "all", "--dry-run", "--json", "/tmp/x.json"])
    assert rc == 0
    assert "would run:" in err and "pytest benchmarks" in err and "ZK_BENCH_QUICK=1" in err
    assert "benchmarks.predict_validation --quick" in err and "--benchmark-json=/tmp/x.json" in err


def test_help_and_usage_errors(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2
    assert cli.main(["predict-time", "--method", "magic"]) == 2
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ calibrate

@pytest.mark.parametrize("hp", [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.8, nesterov=True),
                                dict(momentum=0.5, dampening=0.3, weight_decay=0.05)])
def test_head_aware_is_exact_for_a_linear_backbone(hp):
    """With features linear in the backbone's weights, the head-aware model is the network itself: given the exact
    feature Jacobian as its 'sketch', it reproduces torch.optim.SGD on the real network."""
    model, x, y = _bilinear_problem()
    pred = HeadAwarePredictor(model, (x, y), k=8)
    backbone = model[0]
    params = {n: p.detach() for n, p in backbone.named_parameters()}
    J = vmap(jacrev(lambda p, xi: functional_call(backbone, p, (xi.unsqueeze(0),)).squeeze(0)), (None, 0))(params, x)
    pred.S = torch.cat([J[n].flatten(2) for n in params], 2)  # (N, D, P): S Sᵀ = Θ_φ exactly
    steps, B, lr = 25, 5, 0.2
    q = pred.predict(lr=lr, batch_size=B, max_steps=steps, paths=1, seed=3, sampling="stream", measure_time=False,
                     **hp)
    curve = q.loss_curve
    # reference: the real network with torch.optim.SGD; weight decay toward w0 on the backbone, toward 0 on the head
    real = [p for p in model.parameters()]
    w0 = [p.detach().clone() for p in backbone.parameters()]
    wd = hp.get("weight_decay", 0.0)
    opt = torch.optim.SGD(real, lr=lr, **{k: v for k, v in hp.items() if k != "weight_decay"})
    batches = _batch_stream(len(x), B, "stream", torch.Generator().manual_seed(3))
    ref, shift = [], []
    with torch.no_grad():
        phi0 = backbone(x).double()
    for t in range(steps + 1):
        with torch.no_grad():
            ref.append(float(nn.functional.cross_entropy(model(x), y)))
            shift.append(float((backbone(x).double() - phi0).norm() / (phi0 - phi0.mean(0)).norm()))
        if t == steps:
            break
        b = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[b]), y[b]).backward()
        if wd:
            for p, p0 in zip(backbone.parameters(), w0):
                p.grad += wd * (p.detach() - p0)
            for p in model[1].parameters():
                p.grad += wd * p.detach()
        opt.step()
    np.testing.assert_allclose(curve, ref, rtol=1e-9)
    # the reliability signal: how far the features moved, relative to their spread
    assert q.feature_shift[0] == 0.0 and q.feature_shift[-1] > 0.01
    np.testing.assert_allclose(q.feature_shift, shift, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hp", [dict(momentum=0.0), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, dampening=0.3, weight_decay=0.05)])
def test_head_aware_fixed_feature_norm_is_exact_for_a_normalized_linear_backbone(hp):
    """feature_norm='fixed': φ(x) = ‖φ_0(x)‖ · z/‖z‖ with z linearized. For a linear backbone z is exact, so with
    the exact Jacobian as 'sketch' the prediction is torch.optim.SGD on that normalized network."""
    model, x, y = _bilinear_problem()
    pred = HeadAwarePredictor(model, (x, y), k=8)
    backbone, head = model[0], model[1]
    params = {n: p.detach() for n, p in backbone.named_parameters()}
    J = vmap(jacrev(lambda p, xi: functional_call(backbone, p, (xi.unsqueeze(0),)).squeeze(0)), (None, 0))(params, x)
    pred.S = torch.cat([J[n].flatten(2) for n in params], 2)
    steps, B, lr = 25, 5, 0.5
    kw = dict(lr=lr, batch_size=B, max_steps=steps, paths=1, seed=3, sampling="stream", measure_time=False, **hp)
    q = pred.predict(feature_norm="fixed", **kw)
    with torch.no_grad():
        r0 = backbone(x).norm(dim=1, keepdim=True)

    def net(idx):
        z = backbone(x[idx])
        return head(r0[idx] * z / z.norm(dim=1, keepdim=True))
    w0 = [p.detach().clone() for p in backbone.parameters()]
    wd = hp.get("weight_decay", 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, **{k: v for k, v in hp.items() if k != "weight_decay"})
    batches = _batch_stream(len(x), B, "stream", torch.Generator().manual_seed(3))
    ref, everyone = [], torch.arange(len(x))
    for t in range(steps + 1):
        with torch.no_grad():
            ref.append(float(nn.functional.cross_entropy(net(everyone), y)))
        if t == steps:
            break
        b = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(net(b), y[b]).backward()
        if wd:
            for p, p0 in zip(backbone.parameters(), w0):
                p.grad += wd * (p.detach() - p0)
            for p in head.parameters():
                p.grad += wd * p.detach()
        opt.step()
    np.testing.assert_allclose(q.loss_curve, ref, rtol=1e-9)
    assert abs(q.loss_curve[-1] - pred.predict(**kw).loss_curve[-1]) > 1e-6  # it is not the unnormalized model
    sparse = pred.predict(feature_norm="fixed", eval_every=5, **kw)  # the same dynamics, evaluated every 5 steps
    np.testing.assert_allclose(sparse.loss_curve[::5], q.loss_curve[::5], rtol=1e-12)
    with pytest.raises(ValueError, match="`feature_norm`"):
        pred.predict(feature_norm="unit", **kw)


def test_head_aware_frozen_backbone_is_a_linear_probe():
    model, x, y = _bilinear_problem()
    for p in model[0].parameters():
        p.requires_grad_(False)
    pred = HeadAwarePredictor(model, (x, y), k=8)
    assert pred.S is None
    q = pred.predict(lr=0.5, batch_size=24, max_steps=20, measure_time=False)
    assert (np.diff(q.loss_curve) < 0).all()
    assert (q.feature_shift == 0).all()  # the features never move
    assert calibrate_time(q, q.loss_curve[:6]).feature_shift.shape == q.feature_shift.shape


def test_time_calibration_recovers_a_known_scale():
    t = np.arange(301)
    true = 2.0 * np.exp(-t / 40.0) + 0.1
    predicted = 2.0 * np.exp(-t / 60.0) + 0.1  # 1.5x too slow
    s = fit_time_scale(predicted, true[:21])
    assert s == pytest.approx(1.5, rel=0.02)
    p = Prediction(loss_curve=predicted, accuracy_curve=np.linspace(0, 1, 301), n_samples=100, batch_size=10, lr=0.1,
                   momentum=0.0, step_seconds=0.01, cost_seconds=1.0)
    cal = calibrate_time(p, true[:21])
    assert cal.calibration_scale == pytest.approx(1.5, rel=0.02)
    assert abs(cal.steps_to(fraction=0.2) - np.flatnonzero(true <= 0.2 * true[0])[0]) <= 2
    np.testing.assert_allclose(rescale_curve([0.0, 1.0, 2.0], 0.5), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="positive finite"):
        fit_time_scale(predicted, [1.0])


def test_head_aware_divergence_truncate():
    model, x, y = _bilinear_problem()
    pred = HeadAwarePredictor(model, (x, y), k=8)
    args = dict(lr=40.0, batch_size=5, measure_time=False, paths=2, sampling="stream", momentum=0.9)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        p = pred.predict(max_steps=300, on_divergence="truncate", **args)
    d = p.diverged_at
    assert d is not None and np.isfinite(p.loss_curve[:d]).all() and np.isnan(p.loss_curve[d:]).all()
    with pytest.raises(FloatingPointError, match="diverged"):
        pred.predict(max_steps=300, **args)
    with pytest.raises(ValueError, match="`on_divergence`"):
        pred.predict(max_steps=3, on_divergence="nan", **args)


def test_head_aware_rejects_a_head_that_is_not_last():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return 2.0 * self.head(torch.tanh(self.body(x)))  # something after the head

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)
    with pytest.raises(ValueError, match="last operation of forward"):
        HeadAwarePredictor(Scaled(), (x, y), k=8)


def test_head_aware_feature_rank_restricts_the_feature_motion():
    """feature_rank=r: the sketch is that of the r top-energy feature directions U, i.e. U Uᵀ S of the full one
    (the same random projection), at r/D of the backward passes; the features then move only within U."""
    from zoo_kernels.calibrate import feature_directions
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    full = HeadAwarePredictor(model, (x, y), k=64, seed=4)
    part = HeadAwarePredictor(model, (x, y), k=64, seed=4, feature_rank=3)
    U = feature_directions(full.phi0, 3)
    assert U.shape == (8, 3)
    torch.testing.assert_close(U.T @ U, torch.eye(3, dtype=torch.float64))
    # U holds the top-3 energy directions of the features
    energy = torch.linalg.eigvalsh(full.phi0.T @ full.phi0 / 30).flip(0)
    assert float(((full.phi0 @ U).square().sum(0) / 30).sum()) == pytest.approx(float(energy[:3].sum()), rel=1e-9)
    torch.testing.assert_close(part.S, torch.einsum("de,nek->ndk", U @ U.T, full.S),
                               rtol=1e-9, atol=1e-12)
    args = dict(lr=0.2, batch_size=6, max_steps=30, measure_time=False, paths=1, seed=0, sampling="stream")
    q = part.predict(**args)
    assert np.isfinite(q.loss_curve).all() and q.loss_curve[-1] < q.loss_curve[0]
    # the factored sketch (U, S_r) gives the same dynamics as its expansion U S_r stored whole
    assert part.S_r.shape == (30, 3, 64) and part.U is not None
    whole = HeadAwarePredictor(model, (x, y), k=64, seed=4, feature_rank=3)
    whole.S = part.S  # the setter keeps the full (M, D, k) sketch, U = None
    assert whole.U is None and whole.S_r.shape == (30, 8, 64)
    for kw in (dict(momentum=0.9), dict(feature_norm="fixed", weight_decay=0.01)):
        a, b = part.predict(**args, **kw), whole.predict(**args, **kw)
        np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-10)
        np.testing.assert_allclose(a.feature_shift, b.feature_shift, rtol=1e-9, atol=1e-12)
    assert HeadAwarePredictor(model, (x, y), k=64, seed=4, feature_rank=8).predict(**args).loss_curve == \
        pytest.approx(full.predict(**args).loss_curve, rel=1e-12)
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="`feature_rank` must be None or an int in"):
            HeadAwarePredictor(model, (x, y), k=8, feature_rank=bad)


def test_head_aware_paths_run_together_as_one_by_one():
    """The paths run batched; each path's batches are drawn path after path from one generator, so path 0 of a
    3-path prediction is the 1-path prediction, and the curves are the means of the per-path curves."""
    model, x, y = _bilinear_problem(n=40)
    pred = HeadAwarePredictor(model, (x, y), k=16)
    args = dict(lr=0.3, batch_size=8, max_steps=25, momentum=0.9, measure_time=False, seed=5, sampling="epoch")
    three, one = pred.predict(paths=3, **args), pred.predict(paths=1, **args)
    np.testing.assert_allclose(three.path_losses[0], one.loss_curve, rtol=1e-12)
    np.testing.assert_allclose(three.loss_curve, three.path_losses.mean(0), rtol=1e-12)
    assert not np.allclose(three.path_losses[1], three.path_losses[0])  # other batches


def test_head_aware_eval_every_keeps_the_dynamics():
    """eval_every=E changes only where the full-set loss is computed: at every E-th step (and the last) the curves
    are those of E = 1; in between they are interpolated; a divergence is located to within E steps."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(48, 5, dtype=torch.float64), torch.randint(0, 3, (48,))
    pred = HeadAwarePredictor(model, (x, y), k=32)
    args = dict(lr=0.2, batch_size=8, max_steps=43, momentum=0.9, measure_time=False, paths=2, seed=1,
                sampling="stream", weight_decay=0.01)
    one, five = pred.predict(**args), pred.predict(eval_every=5, **args)
    at = list(range(0, 44, 5)) + [43]
    np.testing.assert_allclose(five.loss_curve[at], one.loss_curve[at], rtol=1e-10)
    np.testing.assert_allclose(five.accuracy_curve[at], one.accuracy_curve[at], rtol=1e-10)
    np.testing.assert_allclose(five.feature_shift[at], one.feature_shift[at], rtol=1e-10)
    lo, hi = np.minimum(one.loss_curve[at[:-1]], one.loss_curve[at[1:]]), np.maximum(one.loss_curve[at[:-1]],
                                                                                      one.loss_curve[at[1:]])
    inner = five.loss_curve[1:5]  # interpolated between steps 0 and 5
    assert ((inner >= lo[0] - 1e-12) & (inner <= hi[0] + 1e-12)).all()
    for bad_every in (0, True, 2.0):  # the warm start's check too (predict.check_eval_every)
        with pytest.raises(ValueError, match="`eval_every` must be a positive int"):
            pred.predict(eval_every=bad_every, **args)
    bad = dict(args, lr=60.0, max_steps=200)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        d1 = pred.predict(on_divergence="truncate", **bad).diverged_at
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        d5 = pred.predict(on_divergence="truncate", eval_every=5, **bad).diverged_at
    assert d1 - 5 <= d5 <= d1


def test_fresh_head_replaces_the_last_linear_or_says_there_is_none():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    out = cli.fresh_head(model, 4, seed=1)
    assert out[2].out_features == 4 and out[2].in_features == 7 and out[0].out_features == 7
    again = cli.fresh_head(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), 4, seed=1)
    assert torch.equal(out[2].weight, again[2].weight)  # seeded
    with pytest.raises(cli.InputError, match="no nn.Linear head to replace"):
        cli.fresh_head(nn.Sequential(nn.Conv2d(1, 2, 3)), 4)


def test_predict_time_holdout_gap(capsys):
    base = PRED + ["--k", "32", "--lr", "0.01", "--batch-size", "4", "--momentum", "0.9", "--subset", "8"]
    obj = run_json(capsys, base + ["--holdout", "6", "--target", "fraction=0.99", "--target", "fraction=1e-9"])
    reached, never = obj["targets"]
    assert reached["steps"] is not None and reached["holdout_gap"] > 0 and reached["flag"] in ("", "memorized")
    assert never["steps"] is None and never["holdout_gap"] is None and never["flag"] == ""
    rc, out, _ = run(capsys, base + ["--holdout", "6", "--warmup-steps", "2"])
    assert rc == 0 and "holdout_gap" in out and "memorized" in out  # the column and the legend
    for extra, match in [(["--holdout", "9"], "`holdout` must be an int in [0, 8]"),
                         (["--holdout", "2", "--method", "sketch"], "--holdout and --holdout-self apply to --method"),
                         (["--holdout-self"], "--holdout-self reads the curves off the holdout rows: it needs "
                                              "--holdout H > 0, got 0")]:
        rc, _, err = run(capsys, base + extra)
        assert rc == 2 and match in err, err


def test_predict_time_holdout_self_reads_the_curves_off_the_holdout(capsys):
    base = PRED + ["--k", "32", "--lr", "0.05", "--batch-size", "4", "--momentum", "0.9", "--subset", "8",
                   "--holdout", "6", "--curves", "--target", "fraction=0.99"]
    plain, own = run_json(capsys, base), run_json(capsys, base + ["--holdout-self"])
    assert own["loss_curve"][0] != plain["loss_curve"][0]  # the holdout rows' loss, not the subset's
    assert own["targets"][0]["holdout_gap"] is not None
    rc, out, _ = run(capsys, base[:-3] + ["--holdout-self", "--warmup-steps", "2"])
    assert rc == 0 and "holdout_gap" in out


def test_recommended_mode_reads_a_dataset_without_targets(capsys):
    import cli_datasets
    args = ["predict-time", "--model", "convnet_latin", "--no-progress", "--threads", "1", "--max-steps", "104",
            "--no-step-time", "--paths", "1", "--lr", "0.01", "--batch-size", "4", "--momentum", "0.9",
            "--method", "recommended"]
    a = run_json(capsys, args + ["--task", "texture_orient", "--shots", "2"])
    b = run_json(capsys, args + ["--dataset", "cli_datasets:without_targets", "--num-classes",
                                 str(a["num_classes"])])
    assert b["num_samples"] == a["num_samples"] and b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-9)
