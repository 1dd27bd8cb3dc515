import random

import pytest

from pars.common.errors import PARSError
from pars.data.pairs import check_threshold, make_pairs, pair_file_name, relative_length_diff


def reference_pairs(rows, num_pairs, threshold, seed):
    """The original release's rule, restated independently of pars.data.pairs."""
    rng = random.Random(seed)
    out = []
    for i, a in enumerate(rows):
        made = tries = 0
        while made < num_pairs and tries < 10 * num_pairs:
            tries += 1
            j = rng.randint(0, len(rows) - 1)
            if j == i:
                continue
            la, lb = a["answer_length"], rows[j]["answer_length"]
            m = max(la, lb)
            if (abs(la - lb) / m if m > 0 else 0.0) < threshold:
                continue
            out.append({"prompt_A": a["prompt"], "prompt_B": rows[j]["prompt"], "label": int(la > lb)})
            made += 1
    return out


def rows_with_lengths(lengths):
    return [{"prompt": f"p{i}", "answer_length": n} for i, n in enumerate(lengths)]


@pytest.mark.parametrize("seed", [0, 42, 43])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.9])
def test_pairs_equal_reference_element_for_element(seed, threshold):
    rng = random.Random(seed * 7 + 1)
    rows = rows_with_lengths([rng.choice([0, 1, 5, 10, 11, 50, 200, 1000]) for _ in range(37)])
    assert make_pairs(rows, 10, threshold, seed) == reference_pairs(rows, 10, threshold, seed)


def test_every_pair_passes_threshold_and_label_means_a_longer():
    rows = rows_with_lengths([10, 12, 100, 13, 50, 0, 0, 9])
    length = {r["prompt"]: r["answer_length"] for r in rows}
    pairs = make_pairs(rows, 5, 0.2, 42)
    assert pairs
    for p in pairs:
        la, lb = length[p["prompt_A"]], length[p["prompt_B"]]
        assert p["prompt_A"] != p["prompt_B"]
        assert relative_length_diff(la, lb) >= 0.2
        assert p["label"] == (1 if la > lb else 0)


def test_at_most_num_pairs_per_row_and_bounded_attempts():
    # All lengths equal: no pair passes, and the loop ends (10 x num_pairs draws per row).
    assert make_pairs(rows_with_lengths([7] * 20), 3, 0.2, 1) == []
    pairs = make_pairs(rows_with_lengths([1, 100, 1, 100, 1, 100]), 2, 0.2, 1)
    firsts = [p["prompt_A"] for p in pairs]
    assert max(firsts.count(f) for f in set(firsts)) <= 2


def test_degenerate_inputs():
    assert make_pairs([], 10, 0.2, 42) == []
    assert make_pairs(rows_with_lengths([5]), 10, 0.2, 42) == []  # only partner is itself


def test_relative_length_diff():
    assert relative_length_diff(0, 0) == 0.0
    assert relative_length_diff(10, 8) == pytest.approx(0.2)
    assert relative_length_diff(8, 10) == pytest.approx(0.2)
    assert relative_length_diff(0, 5) == 1.0


def test_threshold_bounds_and_file_name():
    check_threshold(0.0)
    check_threshold(0.999)
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(PARSError, match="threshold"):
            check_threshold(bad)
    assert pair_file_name("train", 0.2) == "train_pairs_length_diff_0.2.json"
    assert pair_file_name("val", 0.25) == "val_pairs_length_diff_0.25.json"


def test_atomic_json_write_replaces_whole_file_with_normal_mode(tmp_path):
    import json
    import os
    import stat

    from pars.common.jsonio import write_json_atomic, write_json_files_atomic

    target = tmp_path / "out.json"
    write_json_atomic({"a": 1}, target)
    write_json_atomic({"a": "é"}, target)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    # a failure while writing the second file leaves neither file nor temporaries behind
    with pytest.raises(TypeError):
        write_json_files_atomic({tmp_path / "x.json": [1], tmp_path / "y.json": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
