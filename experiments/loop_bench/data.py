"""The traffic the deployed ranker has not seen: ShareGPT's later human turns (turn 2 and on of a conversation;
the quickstart ranker learned first turns), each prompt text once, none that its training data holds, and
the three disjoint sets drawn from them: the recorded requests, the requests after the reload, and the pool
the latency traces are drawn from. Lengths are the true answers' in the served model's tokens (as
experiments.lib.traces counts them)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from experiments.lib.traces import Request, build_trace
from pars.common.jsonio import read_json
from pars.data.sharegpt import conversation_id, turn_pairs

# The served model's chat template wraps the message ("<|user|>\n...\n<|assistant|>\n"): a chat request must
# leave this many tokens of the context free beside its prompt and max_tokens.
CHAT_OVERHEAD_TOKENS = 32


def part_index(item_id: str) -> int:
    """ShareGPT V3 cut long conversations into items `<id>_<part>`: the part's number (0 without one)."""
    head, sep, part = item_id.rpartition("_")
    return int(part) if sep and head and part.isdigit() else 0


def conversations_in_order(items: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict]]]:
    """The items put back together: (conversation id, its turns, the parts in part order), conversations in
    the order of their first item; an item without an id is a conversation of its own."""
    groups: dict[str, list[tuple[int, int, list]]] = {}
    for k, item in enumerate(items):
        item_id = str(item.get("id") or "")
        key = conversation_id(item_id) if item_id else f"#{k}"
        turns = item.get("conversations") if isinstance(item.get("conversations"), list) else []
        groups.setdefault(key, []).append((part_index(item_id), k, turns))
    return [(key, [t for _, _, turns in sorted(parts, key=lambda p: (p[0], p[1])) for t in turns])
            for key, parts in groups.items()]


def later_turns(items: Iterable[dict[str, Any]], min_turn: int = 2, seen: Iterable[str] = ()
                ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows (task_id, prompt, answer_content, turn, conversation) of every human -> gpt turn numbered `min_turn`
    or more in its conversation (1: the first human message, the one the quickstart ranker trained on), in
    file order; each prompt text once (its first occurrence), none whose text is in `seen` (the ranker's own
    train and val rows: a part `<id>_1`'s first message is a later turn of its conversation, and the datasets'
    scripts took it as a first turn), none with an empty prompt or answer. And the counts of what was left out."""
    seen = set(seen)
    counts: Counter = Counter()
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    for conv, turns in conversations_in_order(items):
        counts["conversations"] += 1
        for number, (prompt, answer) in enumerate(turn_pairs(turns), start=1):
            counts["turns"] += 1
            if number < min_turn:
                counts["earlier_turns"] += 1
            elif not prompt.strip() or not answer.strip():
                counts["empty_prompt_or_answer"] += 1
            elif prompt in seen:
                counts["in_the_rankers_data"] += 1
            elif prompt in taken:
                counts["repeated_prompt_text"] += 1
            else:
                taken.add(prompt)
                rows.append({"task_id": f"{conv}#t{number}", "prompt": prompt, "answer_content": answer,
                             "turn": number, "conversation": conv})
    counts["later_turn_rows"] = len(rows)
    return rows, dict(counts)


def seen_prompts(paths: Sequence[str | os.PathLike[str]]) -> set[str]:
    """The prompt texts of data files (val_data.json / train_data.json rows) the ranker was trained or selected on."""
    out: set[str] = set()
    for path in paths:
        out.update(r["prompt"] for r in read_json(path, "--seen-data file")
                   if isinstance(r, dict) and isinstance(r.get("prompt"), str))
    return out


def draw_sets(rows: Sequence[dict], tokenizer: Any, sizes: dict[str, int], seed: int, cap: int, max_model_len: int,
              chat: bool = True) -> tuple[dict[str, list[Request]], list[dict], dict[str, int]]:
    """The named sets, in order (the recorded requests, then those after the reload), drawn without
    replacement with `seed`, each request asking for its true answer length (capped); rows that cannot fit the
    context as a chat request are left out (and counted). Also the rows left for the latency traces (every
    row not in a set: no prompt is replayed that was recorded or sent after the reload) and the skip counts."""
    budget = max_model_len - (CHAT_OVERHEAD_TOKENS if chat else 0)
    total = sum(sizes.values())
    trace, skipped = build_trace(rows, tokenizer, total, seed, cap, budget)
    sets: dict[str, list[Request]] = {}
    start = 0
    for name, n in sizes.items():
        sets[name] = trace[start:start + n]
        start += n
    used = {r.id for r in trace}
    rest = [r for i, r in enumerate(rows) if str(r.get("task_id", i)) not in used]
    return sets, rest, skipped


def latency_trace(pool: Sequence[dict], tokenizer: Any, n: int, seed: int, cap: int, max_model_len: int
               ) -> tuple[list[Request], dict[str, int]]:
    """One seed's latency trace from the rows no set took, drawn exactly as experiments.vllm_bench draws its."""
    return build_trace(pool, tokenizer, n, seed, cap, max_model_len)
