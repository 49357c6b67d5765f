"""studies/optim_study.py: the study contract (run -> DataFrame, figures) on a few steps."""
import math

from studies import optim_study as S
from workbench import study_api


def test_optim_study_contract():
    assert study_api.load("optim") is S
    df, figs = S.run(quick=True, steps=12)
    assert set(figs) == {"loss_curves", "state_error"}
    assert len(df) == 12 * len(S.CONFIGS)
    q = df[df["bits"] == 8]
    # a requantized state carries a real, small error: above float32 noise, below a few percent
    assert ((q["state1_rel_err"] > 1e-5) & (q["state1_rel_err"] < 0.1)).all()
    adam = q[q["optimizer"] == "Adam"]
    assert ((adam["state2_rel_err"] > 1e-5) & (adam["state2_rel_err"] < 0.1)).all()
    assert q[q["optimizer"] == "Lion"]["state2_rel_err"].isna().all()
    table = S.summarize(df)[0][1]
    assert set(table["optimizer"]) == {"Adam", "AdamW", "Lion"}
    assert all(math.isfinite(v) for v in table["final_loss_gap_pct"])
    assert S.notes(df)
