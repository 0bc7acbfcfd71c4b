"""BN step by step: the transform on a mini-batch you can edit, train vs eval mode, BN at
inference as one affine map, the conv case, the backward pass by hand vs autograd, and
ghost batches (BN over slices of the batch)."""

import numpy as np
import pandas as pd
import streamlit as st
import torch

from bnviz import explain
from bnviz.figures import Stage, batch_stages, bn_forward_stages
from ui.common import show
from ui.navigation import through_app

through_app()  # first: a direct visit runs this file without app.py (ui/navigation.py)

FEATURES = ["feature 1", "feature 2", "feature 3"]
DEFAULT_BATCH = [[1.0, 10.0, -3.0], [2.0, 14.0, -1.0], [3.0, 9.0, 0.5], [4.0, 11.0, 2.0], [6.0, 16.0, -0.5]]


def table(values, index=None, digits: int = 4) -> pd.DataFrame:
    arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
    return pd.DataFrame(np.round(arr, digits), columns=FEATURES, index=index)


st.title("BN step by step")
st.markdown("Batch Normalization (Ioffe & Szegedy 2015, Algorithm 1) normalizes each feature over the "
            "mini-batch, then lets the network scale and shift it back with learned **γ** and **β**. "
            "Edit the mini-batch and watch every intermediate value.")

with st.sidebar:
    st.header("Parameters")
    gamma = np.array([st.slider(f"γ ({f})", 0.0, 3.0, 1.0, 0.1, key=f"step.gamma{i}") for i, f in enumerate(FEATURES)])
    beta = np.array([st.slider(f"β ({f})", -3.0, 3.0, 0.0, 0.1, key=f"step.beta{i}") for i, f in enumerate(FEATURES)])
    eps = st.select_slider("ε", options=[1e-8, 1e-5, 1e-3, 1e-1, 1.0], value=1e-5, key="step.eps",
                           format_func=lambda v: f"{v:g}")

st.header("1. The mini-batch")
edited = st.data_editor(pd.DataFrame(DEFAULT_BATCH, columns=FEATURES), num_rows="dynamic", key="step.batch",
                        width="stretch")
x = edited.apply(pd.to_numeric, errors="coerce").dropna().to_numpy(dtype=np.float64)
if len(x) < 2:
    st.info("Batch statistics need at least two rows with a number in every column: add a row.",
            icon=":material/info:")
    st.stop()

f = explain.forward(x, gamma, beta, eps)
st.header("2. Forward, in training mode")
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Mini-batch mean** μ = (1/m) Σ xᵢ and **variance** σ² = (1/m) Σ (xᵢ − μ)²")
    st.dataframe(table([f.mean, f.var], index=["μ", "σ²"]), width="stretch")
    st.markdown("**Normalized** x̂ = (x − μ) / √(σ² + ε): each column now has mean 0, variance ≈ 1")
    st.dataframe(table(f.x_hat), width="stretch")
with c2:
    st.markdown("**Scale and shift** y = γ x̂ + β: the network can undo the normalization if that helps")
    st.dataframe(table(f.y), width="stretch")
    st.markdown("Check: the columns of y have mean β and standard deviation ≈ γ.")
    st.dataframe(table([f.y.mean(axis=0), f.y.std(axis=0)], index=["mean", "std"]), width="stretch")
show(batch_stages(bn_forward_stages(x, f.x_hat, f.y), FEATURES, "One mini-batch through BN, feature by feature"),
     "step.forward_chart")
st.caption(f"Each line is one row of the batch. Normalizing brings every feature to mean 0 and spread 1 "
           f"whatever its scale (the batch's means: {', '.join(f'{m:.3g}' for m in f.mean)}), and keeps each "
           "row's place among the others; γ and β in the sidebar then stretch and move the output.")

st.header("3. Train mode vs eval mode")
st.markdown("In training BN uses the current batch's statistics. For inference it uses *population* "
            "statistics, tracked by moving averages. PyTorch's convention: "
            "new = (1 − momentum) · old + momentum · batch, with the **unbiased** variance m/(m−1) · σ².")
c1, c2 = st.columns([1, 2])
with c1:
    momentum = st.slider("momentum", 0.01, 1.0, 0.1, 0.01, key="step.momentum")
    batches = st.slider("batches seen (this one, repeatedly)", 1, 100, 5, key="step.batches")
run_mean, run_var = np.zeros(len(FEATURES)), np.ones(len(FEATURES))
for _ in range(batches):
    run_mean, run_var = explain.running_update(run_mean, run_var, x, momentum)
scale, shift = explain.inference_affine(gamma, beta, run_mean, run_var, eps)
eval_y = scale * x + shift
with c2:
    st.dataframe(table([run_mean, run_var], index=["running mean", "running var"]), width="stretch")
    st.markdown(f"After {batches} batches the running statistics started at (0, 1) have moved "
                f"{'most' if (1 - momentum) ** batches < 0.1 else 'part'} of the way to this batch's. "
                "Eval-mode outputs for the same rows:")
    st.dataframe(table(eval_y), width="stretch")
gap = float(np.max(np.abs(eval_y - f.y)))
show(batch_stages([Stage("train mode", "y in train mode (this batch's μ and σ²)", f.y),
                   Stage("eval mode", "y in eval mode (the running statistics)", eval_y)],
                  FEATURES, "The same rows in train mode and in eval mode"),
     "step.modes_chart")
st.markdown(f"Largest difference between train-mode and eval-mode output: **{gap:.4f}**. "
            "Small or unrepresentative batches make this gap, and so accuracy in the two modes, differ. "
            "Slide *batches seen* up and the lines flatten, though not quite: the running variance is "
            "the unbiased m/(m−1) · σ², larger than the σ² train mode divides by.")

st.header("4. At inference BN is one affine map")
st.markdown("y = γ/√(Var + ε) · x + (β − γ E[x]/√(Var + ε)) (section 3.1): it can be folded into the "
            "preceding linear layer.")
st.dataframe(table([scale, shift], index=["scale", "shift"]), width="stretch")
bn = torch.nn.BatchNorm1d(len(FEATURES), eps=eps, momentum=momentum, dtype=torch.float64).eval()
with torch.no_grad():
    bn.weight.copy_(torch.tensor(gamma)); bn.bias.copy_(torch.tensor(beta))
    bn.running_mean.copy_(torch.tensor(run_mean)); bn.running_var.copy_(torch.tensor(run_var))
    torch_eval = bn(torch.tensor(x)).numpy()
st.markdown(f"Largest difference from torch's `BatchNorm1d` in eval mode: **{np.max(np.abs(torch_eval - eval_y)):.2e}**")

st.header("5. Convolutions: one mean and variance per channel")
st.markdown("For a conv layer (section 3.2), statistics are taken per feature map over the batch **and** all "
            "positions, N × H × W values, with one γ and β per channel.")
conv_x = np.random.default_rng(0).normal(loc=[[[[2.0]], [[-1.0]]]], scale=[[[[1.5]], [[0.5]]]], size=(4, 2, 3, 3))
mean_c, var_c = explain.conv_channel_stats(conv_x)
st.dataframe(pd.DataFrame({"values per channel": [4 * 3 * 3] * 2, "mean": mean_c.round(4), "variance": var_c.round(4)},
                          index=["channel 1", "channel 2"]), width="stretch")
st.caption("A random batch of 4 images with 2 channels of 3 × 3: each channel's 36 values share one μ and σ².")

st.header("6. Backward: the paper's formulas by hand vs autograd")
st.markdown(r"""
With ℓ the loss and upstream gradients ∂ℓ/∂y (random here, fixed seed):

- ∂ℓ/∂x̂ = ∂ℓ/∂y · γ
- ∂ℓ/∂σ² = Σ ∂ℓ/∂x̂ · (x − μ) · (−½)(σ² + ε)^(−3/2)
- ∂ℓ/∂μ = Σ ∂ℓ/∂x̂ · (−1/√(σ² + ε)) + ∂ℓ/∂σ² · Σ −2(x − μ) / m
- ∂ℓ/∂x = ∂ℓ/∂x̂ / √(σ² + ε) + ∂ℓ/∂σ² · 2(x − μ)/m + ∂ℓ/∂μ / m
- ∂ℓ/∂γ = Σ ∂ℓ/∂y · x̂,  ∂ℓ/∂β = Σ ∂ℓ/∂y
""")
dy = np.random.default_rng(1).normal(size=x.shape)
hand = explain.backward_by_hand(x, gamma, beta, dy, eps)
auto = explain.backward_autograd(x, gamma, beta, dy, eps)
c1, c2 = st.columns(2)
with c1:
    st.markdown("**By hand** ∂ℓ/∂x")
    st.dataframe(table(hand.x, digits=6), width="stretch")
with c2:
    st.markdown("**Autograd** (torch `batch_norm`) ∂ℓ/∂x")
    st.dataframe(table(auto.x, digits=6), width="stretch")
diff = explain.max_abs_diff(hand, auto)
st.dataframe(pd.DataFrame({"by hand": [hand.gamma.round(6).tolist(), hand.beta.round(6).tolist()],
                           "autograd": [auto.gamma.round(6).tolist(), auto.beta.round(6).tolist()]},
                          index=["∂ℓ/∂γ", "∂ℓ/∂β"]), width="stretch")
st.success(f"Largest absolute difference, by hand vs autograd: ∂ℓ/∂x {diff['x']:.1e}, ∂ℓ/∂γ {diff['gamma']:.1e}, "
           f"∂ℓ/∂β {diff['beta']:.1e}.", icon=":material/check:")
st.caption("Note Σᵢ ∂ℓ/∂xᵢ = 0 for every feature: shifting the whole batch cannot change the normalized output.")

st.header("7. Ghost batches: each slice of the batch normalized on its own")
st.markdown("Ghost Batch Normalization (Hoffer et al. 2017) splits the mini-batch, in order, into *ghost* "
            "batches of about the same size and normalizes each by its own μ and σ², with one γ and β for all. "
            "At a large batch BN's statistics are nearly exact; ghost batches give back the noise of small "
            "ones, which regularizes (the live lab's `ghost-bn` preset shows what that does to training).")
if len(x) < 4:
    st.info("Two ghost batches need at least four rows: add rows to the mini-batch.", icon=":material/info:")
    st.stop()
ghost_size = st.slider("ghost batch size", 2, len(x), 2, key="step.ghost_size",
                       help="The batch splits into batch size // ghost batch size slices within one row of each other.")
g = explain.ghost_forward(x, gamma, beta, ghost_size, eps)
names = [f"ghost {j + 1} (rows {a}–{b - 1})" for j, (a, b) in enumerate(g.parts)]
st.dataframe(pd.concat([table(g.mean, index=[f"μ, {n}" for n in names]),
                        table(g.var, index=[f"σ², {n}" for n in names])]), width="stretch")
show(batch_stages([Stage("x", "x", x), Stage("BN", "y, BN over the whole batch", f.y),
                   Stage("Ghost BN", "y, Ghost BN: normalized by its own ghost batch", g.y)],
                  FEATURES, "The same rows through BN and through Ghost BN"),
     "step.ghost_chart")
spans = ", ".join(f"rows {a}–{b - 1}" for a, b in g.parts)
plural = "es" if len(g.parts) > 1 else ""
st.caption(f"The {len(x)} rows make {len(g.parts)} ghost batch{plural} ({spans}). A row's Ghost BN output depends "
           "on which slice it landed in, not only on the whole batch: that is the noise. With one ghost batch "
           "(a ghost size over half the batch) the BN and Ghost BN ends are the same.")
