"""Every metric name bnviz records, defined once; the CSV, the charts and the CLI import them.

Per step and variant the trainer records one row: ``STEP_METRICS`` then, for each hidden
layer in order, ``LAYER_METRICS``. Test metrics come every ``eval_every`` steps.
"""

PERCENTILES = (15, 50, 85)  # the paper's Figure 1 plots these three

STEP_METRICS = ("train_loss",)
LAYER_METRICS = (
    "act_p15", "act_p50", "act_p85",      # whole layer: input to the nonlinearity
    "act_mean", "act_std",
    "unit_p15", "unit_p50", "unit_p85",   # the tracked unit ("a typical sigmoid")
    "grad_norm", "weight_norm", "update_ratio",
)
EVAL_METRICS = ("test_loss", "test_acc")
# Santurkar et al. 2018, every ``landscape_every`` steps (they cost extra passes; see landscape.py):
LANDSCAPE_LAYER_METRICS = ("ics_l2", "ics_cos")  # per hidden layer: ||G - G'|| and cos(G, G')
LANDSCAPE_METRICS = ("loss_range", "grad_change", "beta_smoothness")  # along the gradient direction
DIVERGED = "diverged"  # 1 at the step a variant's loss became NaN or infinite
ALL_METRICS = STEP_METRICS + EVAL_METRICS + LAYER_METRICS + LANDSCAPE_LAYER_METRICS + LANDSCAPE_METRICS + (DIVERGED,)

LABELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "test_acc": "test accuracy",
    "act_p15": "15th percentile", "act_p50": "median", "act_p85": "85th percentile",
    "act_mean": "mean", "act_std": "std",
    "unit_p15": "unit 15th pct", "unit_p50": "unit median", "unit_p85": "unit 85th pct",
    "grad_norm": "weight-gradient norm ||dL/dW||",
    "weight_norm": "weight norm ||W||",
    "update_ratio": "update / weight ||ΔW|| / ||W||",
    "ics_l2": "ICS ||G − G'||", "ics_cos": "ICS cos(G, G')",
    # Short: these title ~150 px panels on a projector, where the longer ones overlapped; the
    # smoothness chart's title and caption say "along the gradient" and give the formulas.
    "loss_range": "loss range",
    "grad_change": "gradient change",
    "beta_smoothness": "effective β-smoothness",
    DIVERGED: "diverged",
}
