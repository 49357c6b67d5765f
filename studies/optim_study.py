"""Optimizer study: 32-bit vs 8-bit blockwise state for Adam, AdamW and Lion on a small real model.

Task: a teacher-student classification problem on CPU. A fixed random teacher MLP (64 -> 128 -> 10,
tanh) labels Gaussian inputs; a student MLP (64 -> 256 -> 256 -> 10, GELU, ~85k parameters) learns it
with cross-entropy from the same initialisation and the same batches under every optimizer. The
three weight matrices (16k, 65k, 2.6k elements) get 8-bit state where they pass ``min_8bit_size``
(set to 2048 here, so all three are 8-bit; biases keep 32-bit state, as bitsandbytes).

Measured per step: the training loss; for the 8-bit runs, the state quantization error of that
step -- the 8-bit optimizer's new state after requantization against the same update computed in
float32 from the same (dequantized) old state: ``||deq(q(s)) - s|| / ||s||`` over all 8-bit
parameters, for the first state (signed dynamic map) and the second (unsigned dynamic map, Adam
only). At the end: held-out loss and accuracy. The final loss gap is (8-bit - 32-bit) / 32-bit
of the mean training loss over the last 10% of steps.
"""
from __future__ import annotations

import pandas as pd
import torch

TITLE = "Optimizers: 32-bit vs 8-bit blockwise state (Adam, AdamW, Lion)"
DESCRIPTION = __doc__.split("\n\n", 1)[1]

CONFIGS = [("Adam", 32), ("Adam", 8), ("AdamW", 32), ("AdamW", 8), ("Lion", 32), ("Lion", 8)]
LR = {"Adam": 1e-3, "AdamW": 1e-3, "Lion": 3e-4}
STEPS, QUICK_STEPS, BATCH, D_IN, N_CLS = 1000, 200, 128, 64, 10


def _data(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(D_IN, 128, generator=g) / D_IN ** 0.5
    w2 = torch.randn(128, N_CLS, generator=g) / 128 ** 0.5 * 3.0
    x = torch.randn(n, D_IN, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return x, y


def _student(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                               torch.nn.GELU(), torch.nn.Linear(256, N_CLS))


def _opt(name: str, bits: int, params):
    import workbench.optim as O
    cls = getattr(O, f"{name}{bits}bit")
    return cls(params, lr=LR[name], min_8bit_size=2048, backend="auto")


def _shadow_states(opt, p, t):
    """The float32 new state of one 8-bit parameter for this step, from its dequantized old state."""
    from workbench.optim import functional as W
    st = opt.state[p]
    g = opt.param_groups[0]
    b = g["betas"]
    name = opt.optimizer_name
    k = W.scalars(name, b[0], b[1] if len(b) > 1 else 0.0, 0.0, 0.0, g["eps"], g["weight_decay"], t, g["lr"], 1.0,
                  True)
    s1 = W._dq(st["state1"], st["absmax1"], st["qmap1"])
    s2 = W._dq(st["state2"], st["absmax2"], st["qmap2"]) if "state2" in st else None
    _, ns1, ns2 = W._rule(name, p.grad.reshape(-1).float(), p.detach().reshape(-1).float(), s1, s2, k, t, True)
    return ns1, ns2


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def train_one(name: str, bits: int, steps: int, seed: int = 0, threads: int = 1) -> list[dict]:
    """Train the student with one optimizer; one row per step."""
    from workbench.optim import functional as W
    torch.set_num_threads(threads)
    x, y = _data(seed, steps * BATCH + 4096)
    xe, ye = x[-4096:], y[-4096:]
    model = _student(seed + 1)
    opt = _opt(name, bits, model.parameters())
    rows = []
    for t in range(1, steps + 1):
        xb, yb = x[(t - 1) * BATCH: t * BATCH], y[(t - 1) * BATCH: t * BATCH]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        shadows = {}
        if bits == 8:
            for p in model.parameters():
                st = opt.state[p]
                if st and st["state1"].dtype == torch.uint8:
                    shadows[p] = _shadow_states(opt, p, st["step"] + 1)
        opt.step()
        if bits == 8 and t == 1:  # state is created inside the first step: shadow from zeros
            for p in model.parameters():
                st = opt.state[p]
                if st["state1"].dtype == torch.uint8:
                    z1 = torch.zeros(p.numel())
                    z2 = torch.zeros(p.numel()) if "state2" in st else None
                    k = W.scalars(opt.optimizer_name, *opt.param_groups[0]["betas"][:2], 0.0, 0.0,
                                  opt.param_groups[0]["eps"], opt.param_groups[0]["weight_decay"], 1,
                                  opt.param_groups[0]["lr"], 1.0, True)
                    _, n1, n2 = W._rule(opt.optimizer_name, p.grad.reshape(-1).float(), p.detach().reshape(-1),
                                        z1, z2, k, 1, True)
                    shadows[p] = (n1, n2)
        row = {"optimizer": name, "bits": bits, "step": t, "loss": float(loss.detach())}
        if shadows:
            e1, e2, r1, r2 = [], [], [], []
            for p, (n1, n2) in shadows.items():
                st = opt.state[p]
                q1 = W._dq(st["state1"], st["absmax1"], st["qmap1"])
                e1.append(q1 - n1)
                r1.append(n1)
                if n2 is not None:
                    e2.append(W._dq(st["state2"], st["absmax2"], st["qmap2"]) - n2)
                    r2.append(n2)
            row["state1_rel_err"] = _rel(torch.cat(e1) + torch.cat(r1), torch.cat(r1))
            row["state2_rel_err"] = _rel(torch.cat(e2) + torch.cat(r2), torch.cat(r2)) if e2 else float("nan")
        rows.append(row)
    with torch.no_grad():
        logits = model(xe)
        rows[-1]["eval_loss"] = float(torch.nn.functional.cross_entropy(logits, ye))
        rows[-1]["eval_acc"] = float((logits.argmax(1) == ye).float().mean())
    return rows


def run(quick: bool = False, executor=None, *, steps: int | None = None, seed: int = 0):
    """(per-step DataFrame, {"loss_curves": Figure, "state_error": Figure})."""
    from workbench.sweep import run_tasks
    steps = steps or (QUICK_STEPS if quick else STEPS)
    tasks = [dict(name=n, bits=b, steps=steps, seed=seed) for n, b in CONFIGS]
    parts = run_tasks(train_one, tasks, executor, desc="optim study")
    df = pd.DataFrame([r for p in parts for r in p])
    return df, figures(df)


def figures(df: pd.DataFrame) -> dict:
    import matplotlib.pyplot as plt
    figs = {}
    names = list(dict.fromkeys(df["optimizer"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), sharey=True)
    axes = [axes] if len(names) == 1 else list(axes)
    for ax, n in zip(axes, names):
        for bits, style in ((32, "-"), (8, "--")):
            sub = df[(df["optimizer"] == n) & (df["bits"] == bits)]
            if sub.empty:
                continue
            smooth = sub["loss"].rolling(max(1, len(sub) // 50), min_periods=1).mean()
            ax.plot(sub["step"], smooth, style, label=f"{bits}-bit")
        ax.set_title(n)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("training loss (smoothed)")
    fig.tight_layout()
    figs["loss_curves"] = fig
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    q = df[df["bits"] == 8]
    for n in names:
        sub = q[q["optimizer"] == n]
        if "state1_rel_err" in sub:
            ax.plot(sub["step"], sub["state1_rel_err"], label=f"{n} state1 (signed map)")
        if "state2_rel_err" in sub and sub["state2_rel_err"].notna().any():
            ax.plot(sub["step"], sub["state2_rel_err"], "--", label=f"{n} state2 (unsigned map)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("relative state error per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["state_error"] = fig
    return figs


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    out = []
    rows = []
    for n in dict.fromkeys(df["optimizer"]):
        r = {"optimizer": n}
        for bits in (32, 8):
            sub = df[(df["optimizer"] == n) & (df["bits"] == bits)]
            if sub.empty:
                continue
            tail = sub[sub["step"] > sub["step"].max() * 0.9]
            r[f"final_loss_{bits}"] = tail["loss"].mean()
            last = sub.iloc[-1]
            r[f"eval_loss_{bits}"] = last.get("eval_loss")
            r[f"eval_acc_{bits}"] = last.get("eval_acc")
            if bits == 8:
                r["state1_rel_err_mean"] = sub["state1_rel_err"].mean()
                r["state2_rel_err_mean"] = sub["state2_rel_err"].mean()
        if "final_loss_32" in r and "final_loss_8" in r:
            r["final_loss_gap_pct"] = 100 * (r["final_loss_8"] - r["final_loss_32"]) / r["final_loss_32"]
        rows.append(r)
    out.append(("Final loss (mean of the last 10% of steps), held-out loss/accuracy, mean state error",
                pd.DataFrame(rows)))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    s = summarize(df)[0][1]
    return [f"{int(df['step'].max())} steps, batch {BATCH}, CPU, backend auto; largest |final loss gap| "
            f"{s['final_loss_gap_pct'].abs().max():.2f}% ({s.loc[s['final_loss_gap_pct'].abs().idxmax(), 'optimizer']})"]


if __name__ == "__main__":
    import sys
    import time
    t0 = time.time()
    d, f = run(quick="--quick" in sys.argv)
    print(summarize(d)[0][1].to_string())
    print(notes(d), f"{time.time() - t0:.1f} s")
