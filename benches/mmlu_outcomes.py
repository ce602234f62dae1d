"""The MMLU routing set (../shared/data/routing/mmlu, RouteLLM's) as rows, and as the outcome JSONL
`switchpoint eval` and `routing.predictor.outcomes` read: one line per prompt and model,
`{"prompt": ..., "model": ..., "score": 0|1}`.

    .venv/bin/python -m benches.mmlu_outcomes OUT.jsonl [--subjects anatomy,virology]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
WEAK: Final = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG: Final = "gpt-4-1106-preview"


@dataclass(frozen=True, slots=True)
class Question:
    subject: str
    prompt: str
    weak: float
    strong: float


def read_mmlu(directory: Path = DATA) -> list[Question]:
    """Every row of every `mmlu_<subject>.csv`, in file order."""
    questions: list[Question] = []
    for path in sorted(directory.glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                questions.append(
                    Question(subject, row["prompt"], _correct(row[WEAK]), _correct(row[STRONG]))
                )
    if not questions:
        raise SystemExit(f"no mmlu_*.csv in {directory}")
    return questions


def outcome_lines(questions: Sequence[Question]) -> list[str]:
    lines = []
    for question in questions:
        for model, score in ((WEAK, question.weak), (STRONG, question.strong)):
            lines.append(json.dumps({"prompt": question.prompt, "model": model, "score": score}))
    return lines


def _correct(cell: str) -> float:
    if cell not in ("True", "False"):
        raise ValueError(f"expected True or False, got {cell!r}")
    return 1.0 if cell == "True" else 0.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--subjects", default="", help="comma-separated subjects (default: all)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    questions = read_mmlu(args.data)
    if args.subjects:
        wanted = set(args.subjects.split(","))
        questions = [q for q in questions if q.subject in wanted]
    args.out.write_text("\n".join(outcome_lines(questions)) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(questions)} prompts, {2 * len(questions)} outcomes")


if __name__ == "__main__":
    main()
