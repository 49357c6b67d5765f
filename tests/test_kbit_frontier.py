"""The k-bit frontier study (studies/kbit_frontier.py): discovered as a study, honest bit counts (the formula equals
the stored bits), the Pareto flags, the expected orderings, figures, and the #2086 layer comparison on MiniLM."""
from __future__ import annotations

import pandas as pd
import pytest

from studies import kbit_frontier as F
from workbench import study_api


def test_discovered_as_a_study():
    assert study_api.canonical("kbit_frontier") == "kbit_frontier"
    assert study_api.load("kbit_frontier") is F


@pytest.fixture(scope="module")
def normal_rows():
    methods = ["nf e4m4 bs32", "nf fp16 row", "affine minmax g32", "affine mse g64", "nf e4m4 bs32 +rot",
               "nf dq8 bs64", "mxfp4 (k=4)"]
    df, figs = F.run(quick=True, sources=("normal", "student-t"), methods=methods)
    return df, figs


def test_rows_bits_and_pareto(normal_rows):
    df, figs = normal_rows
    assert set(df["source"]) == {"normal", "student-t"} and "skipped" not in df
    assert len(df) == 2 * (6 * 7 + 1)
    # the formula counts exactly what is stored (dq8: its float32 per 256 scales, rounded up per tensor)
    exact = df[df["scale_format"] != "dq8"]
    assert (exact["bits_per_param"] - exact["stored_bits_per_param"]).abs().max() < 1e-9
    assert (df["bits_per_param"] - df["stored_bits_per_param"]).abs().max() < 0.01
    by = df.set_index(["source", "method", "k"])
    assert by.loc[("normal", "affine minmax g32", 3), "bits_per_param"] == 3 + (16 + 8) / 32
    assert by.loc[("normal", "nf fp16 row", 3), "bits_per_param"] == 3 + 16 / 384
    for (src, m), g in df.groupby(["source", "method"]):   # more bits, less error, for every method
        if len(g) > 1:
            assert g.sort_values("k")["mse"].is_monotonic_decreasing, (src, m)
    for src, g in df.groupby("source"):                    # some rows on the frontier, not all
        assert g["pareto"].any() and not g["pareto"].all()
        for _, r in g[g["pareto"]].iterrows():
            assert not ((g["bits_per_param"] <= r["bits_per_param"]) & (g["mse"] < r["mse"])).any()
    # rotation helps the heavy-tailed data at 2..4 bits
    for k in (2, 3, 4):
        assert by.loc[("student-t", "nf e4m4 bs32 +rot", k), "mse"] < by.loc[("student-t", "nf e4m4 bs32", k), "mse"]
    assert set(figs) == {"kbit_frontier"}
    assert [t for t, _ in F.summarize(df)][:2] == ["SQNR (dB), normal data (rows: method, columns: K)",
                                                   "SQNR (dB), student-t data (rows: method, columns: K)"]
    assert any(n.startswith("3-bit, normal: best") for n in F.notes(df))


def test_minilm_layer_comparison():
    try:
        F._minilm_matrices()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"MiniLM weights not installed: {e}")
    lay = F.layer_comparison()
    assert len(lay) >= 36 and (lay["ratio"] > 0).all()
    assert (lay["ratio"] < 1).sum() > len(lay) // 2     # affine int4 g32 wins most layers (bitsandbytes #2086)
    df = pd.concat([lay], ignore_index=True)
    assert F.notes(df)[0].startswith("bitsandbytes #2086 on MiniLM: affine int4 g32 has lower RMSE")
