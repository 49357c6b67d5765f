"""A model of the k-bit lane quantizer's shared-memory table reads (cuda_src/kbit.cu: kk_stage_lane, kk_code_lane):
wavefronts per warp request, by table entry size and number of copies, on normal data. No GPU needed.

    python -m studies.probes.lane_table_banks [--ks 4,6,7,8] [--out FILE]

Each lane codes its own 32-element group, so a warp request is 32 lanes reading the entries of element j of 32
groups (quotients x / absmax of standard normal data). Copies are interleaved entry by entry, lane l reading copy
l % copies. Shared memory has 32 four-byte banks: a request takes as many wavefronts as the most distinct words any
bank must serve (one word read by several lanes is a broadcast); an 8-byte read is served per half-warp, over bank
pairs, so it takes at least 2. The kernel's entries are 8 bytes (bound bits, code below); a 4-byte entry (the bound's
bits below the cell's prefix and the code) would be the alternative. Nsight Compute measured the 8-byte tables on
the H200 (reports/kbit-h200/tuning/): this model is what separates the copies' effect from everything else.
"""
from __future__ import annotations

import argparse

import numpy as np

from numba_kernels.cell_plan import kbit_lane_table, kbit_plan
from workbench.codebooks import create_normal_float_codebook


def entry_indices(k: int, warps: int, rng) -> tuple[np.ndarray, int]:
    """[requests, 32] lane-table entry indices of NF-k coding normal data, and the table's entry count."""
    cb = np.sort(create_normal_float_codebook(k).numpy().astype(np.float32))
    t, sh, kbase, _ = kbit_lane_table(kbit_plan(cb))
    x = rng.standard_normal((warps, 32, 32)).astype(np.float32)            # warp, lane (its group), element
    bits = (x / np.abs(x).max(axis=2, keepdims=True)).view(np.uint32)
    cell = np.maximum(((bits << np.uint32(1)) >> np.uint32(sh + 1)).astype(np.int64) - kbase, 0)
    idx = 2 * cell + (bits >> 31)
    return idx.transpose(0, 2, 1).reshape(-1, 32), t.shape[0]


def wavefronts(idx: np.ndarray, copies: int, entry_bytes: int) -> float:
    """Mean wavefronts per request."""
    word = idx * copies + (np.arange(32) % copies)                          # entry slot, in entries
    groups = ((slice(0, 16), 16), (slice(16, 32), 16)) if entry_bytes == 8 else ((slice(0, 32), 32),)
    total = np.zeros(len(idx))
    for lanes, nbanks in groups:
        w = np.sort(word[:, lanes], axis=1)
        distinct = np.concatenate([np.ones((len(w), 1), bool), w[:, 1:] != w[:, :-1]], axis=1)
        bank = w % nbanks
        counts = np.zeros((len(w), nbanks), np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(w)), w.shape[1]), bank.ravel()), distinct.ravel())
        total += counts.max(axis=1)
    return float(total.mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="4,6,7,8")
    ap.add_argument("--warps", type=int, default=2048)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    lines = ["wavefronts per warp request (mean), NF-k on standard normal data; table bytes = entries x entry size x "
             "copies (the kernel's budget for them: 44 KB, three CTAs per SM)"]
    for k in map(int, args.ks.split(",")):
        idx, n = entry_indices(k, args.warps, rng)
        cells = []
        for b, copies in ((8, 1), (8, 4), (8, 8), (8, 16), (4, 4), (4, 8), (4, 16), (4, 32)):
            cells.append(f"{b} B x{copies} {n * b * copies / 1024:5.1f} KB: {wavefronts(idx, copies, b):4.2f}")
        lines.append(f"K = {k} ({n} entries)\n    " + "\n    ".join(cells))
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
