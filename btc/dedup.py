"""Duplicate detection: exact, near, mirrored and re-windowed copies → duplicate groups.

Works on the index table of `btc.data.index_dataset`, so every file is decoded once:
- exact: same sha256;
- near / mirrored: pHash of the grayscale image (or of its mirror) within a Hamming threshold —
  re-encoded, resized and left-right flipped copies;
- re-windowed: the same slice with other brightness, contrast or gamma, which moves the raw
  pHash. Candidates come from the pHash of the *histogram-equalised* image (equalisation undoes
  any monotonic intensity change) and are confirmed by the correlation of equalised 64×64
  thumbnails (direct or mirrored), which only near-identical anatomy reaches.
Pairs are found with vectorised XOR + popcount over 64-bit hashes in blocks, then merged into
groups with union-find.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from btc.config import check_range

THUMB_SIDE = 64  # side of the equalised thumbnails `btc.data` stores in the index
CANDIDATE_BITS = 10  # equalised-pHash distance of re-windowed candidates (confirmed by similarity)
DEFAULT_SIMILARITY = 0.97  # matched pairs agree on the label 99.9 % of the time (see 01)


def _hash_ints(hex_hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def _pair_distances(
    index: pd.DataFrame, max_distance: int, block: int = 1024, columns=("phash", "phash_mirror")
) -> pd.DataFrame:
    """All pairs i < j whose direct or mirrored hash distance is ≤ `max_distance`."""
    h, m = _hash_ints(index[columns[0]]), _hash_ints(index[columns[1]])
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


def _unit_thumbs(index: pd.DataFrame) -> np.ndarray:
    """Equalised thumbnails as zero-mean, unit-norm float32 `(n, side, side)` arrays."""
    side = THUMB_SIDE
    thumbs = np.stack([np.frombuffer(b, dtype=np.uint8) for b in index["thumb_eq"]])
    thumbs = thumbs.astype(np.float32).reshape(len(index), side * side)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(thumbs, axis=1, keepdims=True)
    return (thumbs / np.where(norms > 0, norms, 1.0)).reshape(len(index), side, side)


def _similarity(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 4096) -> np.ndarray:
    """Correlation of the equalised thumbnails of pairs (i, j), the better of direct and mirrored."""
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), block):
        a, b = thumbs[i[s : s + block]], thumbs[j[s : s + block]]
        direct = (a * b).sum(axis=(1, 2))
        mirrored = (a * b[:, :, ::-1]).sum(axis=(1, 2))
        out[s : s + block] = np.maximum(direct, mirrored)
    return out


def rewindow_candidates(index: pd.DataFrame, candidate_bits: int = CANDIDATE_BITS) -> pd.DataFrame:
    """Candidate re-windowed pairs (positions i < j in `index`) with their thumbnail similarity.

    Args:
        index: Readable rows of an index with `phash_eq`, `phash_eq_mirror` and `thumb_eq`.
        candidate_bits: Maximum Hamming distance of the equalised pHashes (direct or mirrored).

    Returns:
        DataFrame with `i`, `j`, `distance` (equalised pHash bits) and `similarity` in [-1, 1].
    """
    cand = _pair_distances(index, candidate_bits, columns=("phash_eq", "phash_eq_mirror"))
    i, j = cand.i.to_numpy(), cand.j.to_numpy()
    similarity = _similarity(_unit_thumbs(index), i, j) if len(cand) else np.empty(0)
    return pd.DataFrame({"i": i, "j": j, "distance": np.minimum(cand.direct, cand.mirrored),
                         "similarity": similarity})  # fmt: skip


def _without(candidates: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """The candidate pairs that are not already among `found` (both keyed by positions i < j)."""
    known = set(zip(found.i, found.j))
    keep = np.array([(a, b) not in known for a, b in zip(candidates.i, candidates.j)], dtype=bool)
    return candidates[keep] if len(candidates) else candidates


def find_duplicates(
    index: pd.DataFrame, threshold: int = 4, min_similarity: float = DEFAULT_SIMILARITY
) -> tuple[pd.DataFrame, pd.Series]:
    """Find exact, near, mirrored and re-windowed duplicates and merge them into groups.

    Exact: same sha256. Near: pHash of the grayscale images within `threshold` bits (catches
    re-encoded and resized copies). Mirrored: one image's pHash within `threshold` bits of the
    other's mirrored pHash. Re-windowed: the equalised images' pHashes within `CANDIDATE_BITS`
    and their equalised thumbnails correlated at `min_similarity` or more (catches brightness,
    contrast and gamma changes, and near-identical neighbouring slices). Groups are the
    connected components of all such pairs.

    Args:
        index: Output of `index_dataset` (unreadable rows are ignored).
        threshold: Maximum Hamming distance of the 64-bit pHashes.
        min_similarity: Minimum thumbnail correlation of a re-windowed pair; `1.0` turns the
            re-windowed search off (only bit-identical thumbnails would pass).

    Returns:
        `(pairs, groups)`: `pairs` has `path_a`, `path_b`, `kind` (`exact`, `near`,
        `mirrored`, `rewindowed`), `distance` (pHash bits; equalised pHash bits for
        re-windowed pairs), `similarity` (re-windowed pairs only, else NaN), `class_a`,
        `class_b`, `split_a`, `split_b`; `groups` maps every readable row (index label) to an
        integer group id (singletons get their own).

    Raises:
        ValueError: If `threshold` or `min_similarity` is out of range.
    """
    check_range("threshold", threshold, 0, 32, types=int)
    check_range("min_similarity", min_similarity, 0.5, 1.0)
    ok = index[index["readable"]]
    pairs = _pair_distances(ok, threshold)
    sha = ok["sha256"].to_numpy()
    pairs["kind"] = np.where(
        sha[pairs.i] == sha[pairs.j], "exact",
        np.where(pairs.direct <= threshold, "near", "mirrored"),
    )  # fmt: skip
    pairs["distance"] = np.where(pairs.kind == "mirrored", pairs.mirrored, pairs.direct)
    pairs["similarity"] = np.nan
    if min_similarity < 1.0:
        cand = _without(rewindow_candidates(ok), pairs)
        new = cand[cand.similarity >= min_similarity]
        pairs = pd.concat([pairs, new.assign(kind="rewindowed")], ignore_index=True)
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
    pairs = pairs[["path_a", "path_b", "kind", "distance", "similarity", "class_a", "class_b",
                   "split_a", "split_b"]]  # fmt: skip
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


def similarity_check(
    index: pd.DataFrame,
    threshold: int = 4,
    similarities: Sequence[float] = (0.85, 0.9, 0.93, 0.95, 0.97, 0.99),
) -> pd.DataFrame:
    """Tabulate, per similarity cut, the re-windowed pairs admitted and their label agreement.

    Only pairs that exact/near/mirrored matching (at `threshold`) does not already find count:
    this is what the re-windowed search adds.

    Args:
        index: Output of `index_dataset`.
        threshold: pHash threshold of the exact/near/mirrored search.
        similarities: Cuts of the equalised-thumbnail correlation to evaluate.

    Returns:
        Table with `min_similarity`, `pairs`, `same_label_share`, `new_pairs` (admitted at this
        cut but not the next stricter one) and `new_pairs_same_label_share`.
    """
    ok = index[index["readable"]]
    raw = _pair_distances(ok, threshold)
    cand = _without(rewindow_candidates(ok), raw)
    cls = ok["class"].to_numpy()
    same = cls[cand.i] == cls[cand.j]
    sim = cand.similarity.to_numpy()
    rows, stricter = [], np.inf
    for cut in sorted(similarities, reverse=True):
        admitted, new = sim >= cut, (sim >= cut) & (sim < stricter)
        rows.append({"min_similarity": cut, "pairs": int(admitted.sum()),
                     "same_label_share": float(same[admitted].mean()) if admitted.any() else np.nan,
                     "new_pairs": int(new.sum()),
                     "new_pairs_same_label_share": float(same[new].mean()) if new.any() else np.nan})  # fmt: skip
        stricter = cut
    return pd.DataFrame(rows[::-1]).round(4)
