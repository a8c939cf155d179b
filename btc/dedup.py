"""Duplicate detection: exact (sha256), near (pHash) and left-right mirrored copies → groups.

Works on the index table of `btc.data.index_dataset` (its `sha256`, `phash` and `phash_mirror`
columns), so every file is decoded once. Pairs are found with vectorised XOR + popcount over
64-bit hashes in blocks, then merged into groups with union-find.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from btc.config import check_range


def _hash_ints(hex_hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def _pair_distances(index: pd.DataFrame, max_distance: int, block: int = 1024) -> pd.DataFrame:
    """All pairs i < j whose direct or mirrored pHash distance is ≤ `max_distance`."""
    h, m = _hash_ints(index["phash"]), _hash_ints(index["phash_mirror"])
    out = []
    for start in range(0, len(h), block):
        rows = np.arange(start, min(start + block, len(h)))
        direct = np.bitwise_count(h[rows, None] ^ h[None, :])
        mirror = np.bitwise_count(h[rows, None] ^ m[None, :])
        upper = np.arange(len(h))[None, :] > rows[:, None]
        i, j = np.nonzero(upper & (np.minimum(direct, mirror) <= max_distance))
        out.append(pd.DataFrame({"i": rows[i], "j": j, "direct": direct[i, j],
                                 "mirrored": mirror[i, j]}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def find_duplicates(index: pd.DataFrame, threshold: int = 6) -> tuple[pd.DataFrame, pd.Series]:
    """Find exact, near and left-right-mirrored duplicates and merge them into groups.

    Exact: same sha256. Near: pHash of the grayscale images within `threshold` bits (catches
    re-encoded and resized copies). Mirrored: one image's pHash within `threshold` bits of the
    other's mirrored pHash. Groups are the connected components of all such pairs.

    Args:
        index: Output of `index_dataset` (unreadable rows are ignored).
        threshold: Maximum Hamming distance of the 64-bit pHashes.

    Returns:
        `(pairs, groups)`: `pairs` has `path_a`, `path_b`, `kind` (`exact`, `near`,
        `mirrored`), `distance`, `class_a`, `class_b`, `split_a`, `split_b`; `groups` maps
        every readable row (index label) to an integer group id (singletons get their own).
    """
    check_range("threshold", threshold, 0, 32, types=int)
    ok = index[index["readable"]]
    pairs = _pair_distances(ok, threshold)
    sha = ok["sha256"].to_numpy()
    pairs["kind"] = np.where(
        sha[pairs.i] == sha[pairs.j], "exact",
        np.where(pairs.direct <= threshold, "near", "mirrored"),
    )  # fmt: skip
    pairs["distance"] = np.where(pairs.kind == "mirrored", pairs.mirrored, pairs.direct)
    parent = np.arange(len(ok))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs.i, pairs.j):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(x) for x in range(len(ok))])
    group_ids = pd.Series(pd.factorize(roots)[0], index=ok.index, name="group")
    cols = {"path": "path", "class": "class", "official_split": "split"}
    for suffix, pos in (("a", pairs.i), ("b", pairs.j)):
        for src, dst in cols.items():
            pairs[f"{dst}_{suffix}"] = ok[src].to_numpy()[pos]
    pairs = pairs[["path_a", "path_b", "kind", "distance", "class_a", "class_b", "split_a",
                   "split_b"]]  # fmt: skip
    return pairs, group_ids


def duplicate_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Count duplicate pairs by kind, within and across the official split.

    Args:
        pairs: First output of `find_duplicates`.

    Returns:
        Table indexed by kind with columns `within Training`, `within Testing`, `across`,
        `total`, `same label` (share of pairs whose two images carry the same class).
    """
    where = np.where(
        pairs.split_a != pairs.split_b, "across",
        "within " + pairs.split_a.replace("", "folder"),
    )  # fmt: skip
    table = pd.crosstab(pairs["kind"], where, margins=True, margins_name="total")
    same = (pairs.class_a == pairs.class_b).groupby(pairs["kind"]).mean()
    table["same label"] = same.reindex(table.index).fillna((pairs.class_a == pairs.class_b).mean())
    return table.round(3)


def threshold_check(index: pd.DataFrame, thresholds: Sequence[int] = range(0, 17, 2)):
    """Tabulate, per Hamming threshold, how many pairs match and how often labels agree.

    Matched pairs of a good threshold almost always carry the same label; where agreement
    drops, the hash starts pairing different images.

    Args:
        index: Output of `index_dataset`.
        thresholds: Thresholds to evaluate.

    Returns:
        Table with `threshold`, `pairs`, `same_label_share`, `new_pairs_same_label_share`
        (agreement among the pairs first admitted at this threshold).
    """
    ok = index[index["readable"]]
    pairs = _pair_distances(ok, max(thresholds))
    dist = np.minimum(pairs.direct, pairs.mirrored).to_numpy()
    cls = ok["class"].to_numpy()
    same = cls[pairs.i] == cls[pairs.j]
    rows, previous = [], -1
    for t in sorted(thresholds):
        admitted, new = dist <= t, (dist <= t) & (dist > previous)
        rows.append({"threshold": t, "pairs": int(admitted.sum()),
                     "same_label_share": float(same[admitted].mean()) if admitted.any() else np.nan,
                     "new_pairs": int(new.sum()),
                     "new_pairs_same_label_share": float(same[new].mean()) if new.any() else np.nan})  # fmt: skip
        previous = t
    return pd.DataFrame(rows).round(4)
