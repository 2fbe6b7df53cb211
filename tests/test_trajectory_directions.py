"""benchmarks/trajectory_directions.py: the span share and the study's bookkeeping on a short real run."""
import numpy as np
import pytest
import torch

from benchmarks.trajectory_directions import cos, markdown, span_share, study


def test_span_share():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    assert span_share([a, b], 2 * a - 3 * b) == pytest.approx(1.0, abs=1e-12)
    Q = torch.linalg.qr(torch.stack([a, b], 1))[0]
    orth = c - Q @ (Q.T @ c)
    assert span_share([a, b], orth) == pytest.approx(0.0, abs=1e-12)
    assert span_share([a], b) == pytest.approx(cos(a, b) ** 2, rel=1e-12)


@pytest.mark.slow
def test_study_on_a_short_run():
    r = study("convnet_latin", "latin_heldout", 0.01, 64, 0.9, 160, K=100, linearized_all=False)
    assert r["t"] == [150, 160] and len(r["norm"]) == 2 and r["norm"][1] > 0
    share = np.asarray(r["top_energy_share"])
    assert np.all(np.diff(share) >= -1e-12) and share[-1] == pytest.approx(1.0)  # two snapshots: rank 2
    for k, v in r["cos_known"].items():
        assert all(-1 - 1e-9 <= c <= 1 + 1e-9 for c in v), k
    assert r["cos_known"]["buf"][0] > 0.2  # the momentum carries the first steps after w_K: the sign is right
    s = r["span_share_end"]
    assert s["u"] <= s["u+lin_sub"] + 1e-12 and s["lin_sub"] <= s["u+lin_sub"] + 1e-12
    assert s["u+lin_sub"] <= s["u+u_late+buf+g+lin_sub"] + 1e-12
    assert "lin_all" not in s
    md = markdown([r], {"date": "d", "cpu": "c", "torch": "t"})
    assert "convnet_latin → latin_heldout" in md and "u, u_late, g, buf, lin_sub, lin_all" in md
