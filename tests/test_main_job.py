"""`make demo`'s main job end to end (short horizon, no grid): ranks the MiniZoo experts, predicts the time."""
import json

from zoo_kernels import main_job, zoo


def test_main_job_ranks_and_predicts(tmp_path, capsys):
    out = tmp_path / "job.json"
    main_job.main(["--no-recommend", "--horizon", "200", "--json", str(out)])
    obj = json.loads(out.read_text())
    assert obj["task"] == "pendigits_inverted" and obj["shots"] == 10
    order = obj["ranking"]["order"]
    assert obj["chosen"] == order[0] and set(order) <= set(zoo.models()) and len(order) == 18
    pred = obj["prediction"]
    assert pred["step_seconds"] > 0 and all(v > 0 for v in pred["cost_seconds"].values())
    rows = {r["target"]: r for r in pred["targets"]}
    half = next(r for t, r in rows.items() if t.startswith("loss <= 0.5 L0"))
    # the recipe (lr 0.003, momentum 0.9) halves the loss well within 200 steps, predicted by both methods
    assert 0 < half["head-aware steps"] <= 200 and 0 < half["linear (paper) steps"] <= 200
    assert half["epochs"] == half["head-aware steps"] * 32 / 100
    assert "fine-tune " + obj["chosen"] in capsys.readouterr().out
