"""The order of training batches: seeded per epoch, optionally grouped by length, split across ranks.

Every rank builds the same global batches from (seed, epoch) alone and takes its share of each, so ranks
never need to exchange indices, a resumed run rebuilds the interrupted epoch's exact order from the epoch
number, and an epoch visits every item exactly once over all ranks together.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Items are sorted by length within windows of this many batches (as transformers' LengthGroupedSampler):
# wide enough that a batch holds similar lengths, narrow enough that the epoch stays well mixed.
MEGABATCH_BATCHES = 50


class EpochBatches:
    """Global batches of `batch_size` items per optimizer step; rank r of `world_size` gets items r, r+W, ...
    of each (batches are sorted by length when grouped, so every rank gets a similar share of the work).

    With `groups` (a group id per item), the items of a group stay next to each other in the epoch's order,
    so a batch holds few groups (pairs that share their prompt A: the prompt is encoded once for all of
    them), and each rank takes a contiguous share of a batch so that a group is not spread over ranks.
    Groups are shuffled, then sorted by `lengths` (their longest item) within windows, as single items are.
    `max_group` cuts larger groups into pieces of at most that many items, shuffled apart: more groups per
    batch, at the cost of encoding their shared prompt once per piece.
    """

    def __init__(self, n: int, batch_size: int, seed: int, lengths: np.ndarray | None = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 groups: np.ndarray | None = None, max_group: int | None = None) -> None:
        for name, values in (("lengths", lengths), ("groups", groups)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} items")
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self.drop_last = drop_last and n > batch_size
        self.rank, self.world_size = rank, world_size
        self.max_group = max_group
        self.units: list[np.ndarray] | None = None
        if groups is not None:
            order = np.argsort(groups, kind="stable")
            cuts = np.flatnonzero(np.diff(np.asarray(groups)[order])) + 1
            self.units = np.split(order, cuts)

    def _grouped_order(self, rng: np.random.Generator) -> np.ndarray:
        """All items, each group's together (in shuffled order), groups shuffled and length-sorted in windows."""
        assert self.units is not None
        units = [rng.permutation(u) for u in self.units]
        if self.max_group:  # groups cut into pieces of at most max_group items, each piece placed on its own
            k = self.max_group
            units = [u[i : i + k] for u in units for i in range(0, len(u), k)]
        units = [units[i] for i in rng.permutation(len(units))]
        if self.lengths is None:
            return np.concatenate(units)
        mega = MEGABATCH_BATCHES * self.batch_size
        ordered, window, count = [], [], 0
        for u in units + [None]:
            if u is not None:
                window.append(u)
                count += len(u)
            if window and (u is None or count >= mega):
                keys = np.array([-self.lengths[w].max() for w in window])
                ordered.extend(window[i] for i in np.argsort(keys, kind="stable"))
                window, count = [], 0
        return np.concatenate(ordered)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size
        if self.units is not None:
            flat = self._grouped_order(rng)
            batches = [flat[i : i + size] for i in range(0, self.n, size)]
        elif self.lengths is None:
            perm = rng.permutation(self.n)
            batches = [perm[i : i + size] for i in range(0, self.n, size)]
        else:
            perm = rng.permutation(self.n)
            mega = MEGABATCH_BATCHES * size
            batches = []
            for start in range(0, self.n, mega):
                window = perm[start : start + mega]
                window = window[np.argsort(-self.lengths[window], kind="stable")]
                batches.extend(window[i : i + size] for i in range(0, len(window), size))
        if self.drop_last and len(batches[-1]) < size:
            batches.pop()
        elif len(batches) > 1 and len(batches[-1]) < self.world_size:
            # too few items to give every rank one: fold them into the previous batch instead of dropping them
            tail = batches.pop()
            batches[-1] = np.concatenate([batches[-1], tail])
        if self.lengths is not None:
            order = rng.permutation(len(batches))
            # the batch holding the longest item goes first, so running out of memory shows at step 1
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            order = np.concatenate([[longest], order[order != longest]])
            batches = [batches[i] for i in order]
        return batches

    def __len__(self) -> int:
        """Optimizer steps per epoch (the same on every rank)."""
        full, rest = divmod(self.n, self.batch_size)
        if rest == 0 or self.drop_last:
            return max(full, 1)
        return full + 1 if rest >= self.world_size or full == 0 else full

    def rank_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This rank's share of each global batch of `epoch`, from batch `start` on (to resume mid-epoch)."""
        if self.units is not None:  # contiguous shares keep a group on one rank (same sizes as interleaved)
            return [np.array_split(b, self.world_size)[self.rank].tolist() for b in self.global_batches(epoch)[start:]]
        return [b[self.rank :: self.world_size].tolist() for b in self.global_batches(epoch)[start:]]

    def shard_sizes(self, batch_len: int) -> list[int]:
        """Items of a global batch of this length held by each rank."""
        return [len(range(r, batch_len, self.world_size)) for r in range(self.world_size)]


class FixedBatches:
    """A DataLoader batch_sampler over a precomputed list of batches."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
