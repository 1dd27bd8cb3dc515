"""The grid: which cells (family, loss, δ) are trained, the reference cell, and each cell's trainer arguments.

Family `in-batch`: the trainer's --pairing in-batch on train_data.json, one cell per loss; the margin loss once per
δ (the trainer's --similarity-threshold), the other losses have no δ. Family `pair-files`: --pairing pairs on stage
1's pair files made at δ, margin only (a pair file holds pairs, so only a pairwise loss reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# pars.train.losses.LOSSES and PAIR_LOSSES, spelled out so that --help needs no torch (a test keeps them equal)
LOSSES = ("margin", "listmle", "pointwise", "classification")
PAIR_LOSSES = ("margin",)
FAMILIES = ("in-batch", "pair-files")
DEFAULT_DELTAS = (0.0, 0.1, 0.2, 0.3, 0.5)
# Validation: pairwise accuracy on the val pairs made at this δ (also what picks best_model.pt), and the δ of the
# reference cell.
VAL_DELTA = 0.2


@dataclass(frozen=True, order=True)
class Cell:
    family: str
    loss: str
    delta: float | None = None  # None where δ does not apply (in-batch listmle, pointwise, classification)

    @property
    def name(self) -> str:
        """'in-batch margin δ=0.2', 'in-batch listmle', 'pair-files margin δ=0'."""
        return f"{self.family} {self.loss}" + ("" if self.delta is None else f" δ={self.delta:g}")

    @property
    def slug(self) -> str:
        """The cell's folder: 'in-batch_margin_d0.2'."""
        return f"{self.family}_{self.loss}" + ("" if self.delta is None else f"_d{self.delta:g}")

    @property
    def spec(self) -> str:
        """As --cells takes it: 'in-batch:margin:0.2'."""
        return f"{self.family}:{self.loss}" + ("" if self.delta is None else f":{self.delta:g}")


REFERENCE = Cell("in-batch", "margin", VAL_DELTA)


def check_delta(delta: float, what: str = "--deltas") -> float:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"{what}: δ must be in [0, 1), got {delta:g}")
    return float(delta)


def parse_deltas(text: str) -> list[float]:
    """A comma list of δ in [0, 1), sorted, each once; ValueError in one line otherwise."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--deltas wants a comma list of numbers, got {text!r}") from None
    if not values:
        raise ValueError("--deltas is empty")
    return sorted({check_delta(v) for v in values})


def family_cells(family: str, deltas: Sequence[float]) -> list[Cell]:
    if family == "in-batch":
        return [*(Cell("in-batch", "margin", d) for d in deltas),
                *(Cell("in-batch", loss) for loss in LOSSES if loss not in PAIR_LOSSES)]
    return [Cell("pair-files", "margin", d) for d in deltas]


def default_cells(deltas: Sequence[float] = DEFAULT_DELTAS) -> list[Cell]:
    """Every cell: in-batch margin at each δ, listmle, pointwise, classification; pair-files margin at each δ.
    The reference is among them when δ = VAL_DELTA is."""
    return [c for f in FAMILIES for c in family_cells(f, deltas)]


def parse_cell(item: str) -> Cell:
    """One FAMILY:LOSS[:δ] item; ValueError naming what is wrong."""
    parts = [p.strip() for p in item.split(":")]
    family, loss = parts[0], parts[1] if len(parts) > 1 else ""
    if family not in FAMILIES:
        raise ValueError(f"--cells {item!r}: unknown family {family!r} (one of {', '.join(FAMILIES)})")
    if loss not in LOSSES:
        raise ValueError(f"--cells {item!r}: unknown loss {loss!r} (one of {', '.join(LOSSES)})")
    if family == "pair-files" and loss not in PAIR_LOSSES:
        raise ValueError(f"--cells {item!r}: pair files train a pairwise loss only ({', '.join(PAIR_LOSSES)})")
    if len(parts) > 3:
        raise ValueError(f"--cells {item!r}: want FAMILY:LOSS[:δ]")
    if loss in PAIR_LOSSES:
        if len(parts) < 3:
            raise ValueError(f"--cells {item!r}: {loss} needs its δ (FAMILY:{loss}:δ)")
        try:
            delta = float(parts[2])
        except ValueError:
            raise ValueError(f"--cells {item!r}: δ {parts[2]!r} is not a number") from None
        return Cell(family, loss, check_delta(delta, f"--cells {item!r}"))
    if len(parts) == 3:
        raise ValueError(f"--cells {item!r}: δ does not apply to {loss} (its loss is over whole batches)")
    return Cell(family, loss)


def parse_cells(text: str, deltas: Sequence[float]) -> list[Cell]:
    """--cells: 'all', family names (their cells at --deltas) and FAMILY:LOSS[:δ] items, comma-separated; the
    reference cell is always added. Sorted the grid's way (family, loss, δ), each once."""
    cells: list[Cell] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item == "all":
            cells += default_cells(deltas)
        elif item in FAMILIES:
            cells += family_cells(item, deltas)
        else:
            cells.append(parse_cell(item))
    if not cells:
        raise ValueError("--cells is empty")
    every = sorted({*deltas, VAL_DELTA, *(c.delta for c in cells if c.delta is not None)})
    order = {c: i for i, c in enumerate(default_cells(every))}
    return sorted({REFERENCE, *cells}, key=lambda c: order.get(c, len(order)))


def pair_file_deltas(cells: Sequence[Cell], deltas: Sequence[float]) -> list[float]:
    """The δ of the pair files to make: --deltas, the validation's, and every pair-files cell's."""
    return sorted({*map(float, deltas), VAL_DELTA, *(c.delta for c in cells if c.family == "pair-files")})


def pair_file(unit_dir: Path, split: str, delta: float) -> Path:
    """Stage 1's name: train_pairs_length_diff_0.2.json (δ printed as Python prints a float: 0 is '0.0')."""
    from pars.data.pairs import pair_file_name

    return unit_dir / pair_file_name(split, float(delta))


@dataclass(frozen=True)
class TrainSettings:
    """What every run shares (the trainer's flags of the same names)."""

    model_name: str
    pooling: str = "mean"
    truncation: str = "middle"
    max_length: int = 128
    batch_size: int = 64
    learning_rate: float = 5e-5
    num_epochs: int = 100
    warmup_ratio: float = 0.0
    budget_minutes: float = 2.0
    mixed_precision: str = "auto"
    device: str = "cpu"
    extra: tuple[str, ...] = field(default_factory=tuple)


def trainer_argv(cell: Cell, unit_dir: Path, out_dir: Path, seed: int, s: TrainSettings) -> list[str]:
    """The run's arguments to predictor_train/scripts/train_pairwise_bert.py. Validation is the same for every
    cell: the val pairs at VAL_DELTA (val accuracy, which picks best_model.pt) and val_data.json (taus)."""
    argv = ["--output-dir", str(out_dir), "--val-file", str(pair_file(unit_dir, "val", VAL_DELTA)),
            "--val-data-file", str(unit_dir / "val_data.json"), "--model-name", s.model_name,
            "--pooling", s.pooling, "--truncation", s.truncation, "--max-length", str(s.max_length),
            "--batch-size", str(s.batch_size), "--learning-rate", f"{s.learning_rate:g}",
            "--num-epochs", str(s.num_epochs), "--warmup-ratio", f"{s.warmup_ratio:g}",
            "--max-train-minutes", f"{s.budget_minutes:g}", "--seed", str(seed),
            "--mixed-precision", s.mixed_precision, "--device", s.device, "--loss", cell.loss]
    if cell.family == "in-batch":
        # --train-file only locates dataset_info.json (the ranker config's length unit): the rows themselves
        argv += ["--pairing", "in-batch", "--train-file", str(unit_dir / "train_data.json"),
                 "--train-data-file", str(unit_dir / "train_data.json")]
        if cell.delta is not None:
            argv += ["--similarity-threshold", f"{cell.delta:g}"]
    else:
        argv += ["--pairing", "pairs", "--train-file", str(pair_file(unit_dir, "train", cell.delta))]
    return argv + list(s.extra)
