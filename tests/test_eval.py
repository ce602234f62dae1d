"""`switchpoint eval` and its metrics: RouteLLM's APGR and CPT on cases with known answers, the
command end to end on a generated outcome file (real embedder, real OutcomeStore), bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from switchpoint.cli import main
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.outcomes import read_outcomes
from switchpoint.routing.predictor.predict import Weighing
from switchpoint.routing.replay.metrics import (
    PgrCurve,
    accuracy_at,
    cost_quality_curve,
    pgr_curve,
    router_figures,
)
from switchpoint.routing.replay.predictions import (
    Prompt,
    group_by_prompt,
    outcome_store,
    predicted_qualities,
    split_by_hash,
)

# Ten prompts: the strong model alone is right on the first four, both on the next five, neither
# on the last. Weak 0.5, strong 0.9: the gap is the four.
WEAK = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], np.float64)
STRONG = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], np.float64)


def test_a_perfect_router_recovers_the_gap_with_the_fewest_strong_calls() -> None:
    perfect = STRONG - WEAK  # the four that need the strong model score highest
    figures = router_figures(perfect, WEAK, STRONG)
    # PGR rises from 0 to 1 over the first 40 % of strong calls, then stays at 1.
    assert figures.apgr == pytest.approx(0.4 * 0.5 + 0.6 * 1.0)
    assert figures.cpt50 == pytest.approx(0.2)
    assert figures.cpt80 == pytest.approx(0.32)


def test_the_worst_order_recovers_the_gap_last() -> None:
    figures = router_figures(WEAK - STRONG, WEAK, STRONG)
    assert figures.apgr == pytest.approx(0.4 * 0.5)
    assert figures.cpt50 == pytest.approx(0.8)


def test_equal_scores_count_as_a_random_order() -> None:
    # One score for every prompt: no order, so PGR is the diagonal whatever the row order.
    curve = pgr_curve(np.zeros(10), WEAK, STRONG)
    assert curve.apgr == pytest.approx(0.5)
    assert curve.cpt(0.5) == pytest.approx(0.5)
    # Ties only within the top half: the four gainers share it with one non-gainer.
    coarse = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], np.float64)
    assert pgr_curve(coarse, WEAK, STRONG).pgr.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_a_random_router_scores_about_half_over_many_prompts() -> None:
    rng = np.random.default_rng(7)
    weak = (rng.random(20_000) < 0.6).astype(np.float64)
    strong = np.maximum(weak, rng.random(20_000) < 0.5).astype(np.float64)
    figures = router_figures(rng.random(20_000), weak, strong)
    assert figures.apgr == pytest.approx(0.5, abs=0.02)
    assert figures.cpt50 == pytest.approx(0.5, abs=0.03)
    assert figures.cpt80 == pytest.approx(0.8, abs=0.03)


def test_cpt_of_a_known_curve() -> None:
    curve = PgrCurve(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]), 0.5, 0.9)
    assert curve.cpt(0.5) == pytest.approx(0.25)
    assert curve.cpt(0.8) == pytest.approx(0.4)
    assert curve.apgr == pytest.approx(0.75)
    never = PgrCurve(np.array([0.0, 1.0]), np.array([0.0, 0.7]), 0.5, 0.9)
    assert never.cpt(0.8) == 1.0


def test_no_gap_to_recover_is_refused() -> None:
    with pytest.raises(ValueError, match="not above the weak"):
        pgr_curve(np.zeros(10), STRONG, WEAK)


def test_accuracy_at_a_share_and_the_cost_quality_curve() -> None:
    perfect = STRONG - WEAK
    assert accuracy_at(perfect, WEAK, STRONG, np.array([0.0, 0.2, 0.4, 1.0])).tolist() == (
        pytest.approx([0.5, 0.7, 0.9, 0.9])
    )
    predicted = {"cheap": np.full(10, 0.5), "dear": 0.5 + 0.5 * perfect}
    actual = {"cheap": WEAK, "dear": STRONG}
    points = cost_quality_curve(predicted, actual, {"cheap": 1.0, "dear": 10.0}, [0.0, 0.9, 1.0])
    assert points[0].shares == {"cheap": 1.0, "dear": 0.0}
    assert (points[0].cost, points[0].quality) == pytest.approx((1.0, 0.5))
    # At 0.9 only the prompts the dear model is predicted to gain on are worth its cost.
    assert points[1].shares["dear"] == pytest.approx(0.4)
    assert points[1].quality == pytest.approx(0.9)


def test_a_prompt_with_no_similar_outcome_is_predicted_at_the_priors() -> None:
    # Rows along two axes; a query along a third is similar to neither (cosine 0 < the floor).
    axes = np.eye(3, dtype=np.float32)
    prompts = [
        Prompt("a", {"cheap": 0.0, "strong": 1.0}, 10),
        Prompt("b", {"cheap": 1.0, "strong": 1.0}, 10),
    ]
    store = outcome_store(axes[:2], prompts)
    priors = {"cheap": 0.3, "strong": 0.7}
    weighing = Weighing.of(PredictorConfig())
    queries = [Prompt(name, {}, 10) for name in "abc"]
    predicted = predicted_qualities(store, axes, queries, priors, weighing)
    assert predicted["cheap"][2] == pytest.approx(0.3)
    assert predicted["strong"][2] == pytest.approx(0.7)
    # Along the first axis the one outcome pulls each model toward its score there.
    assert predicted["cheap"][0] < 0.3
    assert predicted["strong"][0] > 0.7


# -- the command ------------------------------------------------------------------------------

TABLE_ROW = re.compile(r"^(predictor|prompt length|random) +([\d.]+) +[\d.]+ % +[\d.]+ %$", re.M)
TOPICS = ("Paris", "London", "Rome", "Tokyo", "Cairo", "Lima", "Oslo", "Quito", "Delhi", "Seoul")


def _outcome_file(path: Path, *, third_model: bool = False, first: int = 0, end: int = 40) -> Path:
    """Arithmetic the cheap model gets wrong and the strong one right; greetings both get right."""
    lines = []
    for a in range(first, end):
        math = f"What is {13 + a} multiplied by {27 + 3 * a}? Show the product."
        greeting = f"Write a short friendly hello to my friend in {TOPICS[a % 10]}, number {a}."
        for prompt, weak_ok in ((math, 0), (greeting, 1)):
            lines.append({"prompt": prompt, "model": "cheap", "score": weak_ok})
            lines.append({"prompt": prompt, "model": "strong", "score": 1})
            if third_model:
                lines.append({"prompt": prompt, "model": "middle", "score": 0.5 + 0.5 * weak_ok})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_eval_two_models_prints_the_table_and_writes_the_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = _outcome_file(tmp_path / "outcomes.jsonl")
    png = tmp_path / "curve.png"
    code = main(["eval", "--outcomes", str(outcomes), "--test-percent", "30", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "priors: each model's mean score on the training prompts" in out
    rows = {match[1]: float(match[2]) for match in TABLE_ROW.finditer(out)}
    assert set(rows) == {"predictor", "prompt length", "random"}
    # The neighbours of an arithmetic prompt are arithmetic prompts: the predictor sends exactly
    # those to the strong model first, which is the best order there is (the test prompts are a
    # fixed hash's, so the best router's APGR is known: 1 - half the share needing strong).
    _, test = split_by_hash(group_by_prompt(read_outcomes(outcomes, field="x")[1]), 30)
    needs_strong = sum(p.scores["cheap"] < p.scores["strong"] for p in test) / len(test)
    assert rows["predictor"] == pytest.approx(1 - needs_strong / 2, abs=1e-3)
    assert rows["predictor"] > max(rows["random"], rows["prompt length"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_with_a_test_file_learns_from_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    learnt = _outcome_file(tmp_path / "learnt.jsonl", end=30)
    tested = _outcome_file(tmp_path / "tested.jsonl", first=30)
    # A prompt in both files is only tested: the file learnt from here holds all of `tested` too.
    both = tmp_path / "both.jsonl"
    both.write_text(learnt.read_text() + tested.read_text())
    assert main(["eval", "--outcomes", str(both), "--test", str(tested), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["train_prompts"], report["test_prompts"]) == (60, 20)
    # Half the test prompts need the strong model and the predictor sends exactly those first.
    assert report["routers"]["predictor"]["apgr"] == pytest.approx(1 - 0.5 / 2)


def test_eval_several_models_prints_the_cost_quality_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = _outcome_file(tmp_path / "outcomes.jsonl", third_model=True)
    argv = ["eval", "--outcomes", str(outcomes), "--json", "--png", str(tmp_path / "c.png")]
    costs = ["--cost", "cheap=1", "--cost", "middle=3", "--cost", "strong=10"]
    assert main(argv + costs) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["cheapest"], report["best"]) == ("cheap", "strong")
    curve = report["curve"]
    assert curve[0]["shares"]["cheap"] == 1.0
    assert curve[-1]["quality"] == pytest.approx(1.0)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    # Without every model's cost the curve cannot be drawn: the message names the missing one.
    assert main(argv + costs[:4]) == 1
    assert "give --cost MODEL=X for strong" in capsys.readouterr().err


def test_eval_bad_input_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.jsonl"
    assert main(["eval", "--outcomes", str(missing)]) == 1
    assert f"--outcomes: cannot read {missing}" in capsys.readouterr().err

    good_file = _outcome_file(tmp_path / "good.jsonl")
    assert main(["eval", "--outcomes", str(good_file), "--test", str(missing)]) == 1
    assert f"--test: cannot read {missing}" in capsys.readouterr().err

    malformed = tmp_path / "malformed.jsonl"
    good = json.dumps({"prompt": "hi", "model": "cheap", "score": 1})
    malformed.write_text(f"{good}\n{good}\nnot json\n")
    assert main(["eval", "--outcomes", str(malformed)]) == 1
    err = capsys.readouterr().err
    assert f"{malformed}:3: not JSON" in err
    assert "Traceback" not in err

    outcomes = _outcome_file(tmp_path / "outcomes.jsonl")
    assert main(["eval", "--outcomes", str(outcomes), "--weak", "nope", "--strong", "strong"]) == 1
    assert "--weak: model 'nope' has no outcomes (models: cheap, strong)" in capsys.readouterr().err

    # The strong model must be the better one on the test prompts, or there is no gap.
    reversed_models = ["--weak", "strong", "--strong", "cheap"]
    assert main(["eval", "--outcomes", str(outcomes), *reversed_models]) == 1
    assert "is not above strong" in capsys.readouterr().err
