"""Metric names, what a trial reports each epoch and at its end (the paper's distortion measure itself is
iabf.losses.distortion; tags and the rest of a study's record are iabf/record.py's).

The analysis and the studies select and plot by these names: never rename one casually. No torch
here: analysis/ reads these names and must load without it.
"""

EPOCH = "epoch"
TRAIN_LOSS = "train/loss"            # the minimised objective, per image (eq. 29 with sign flipped)
TRAIN_DISTORTION = "train/distortion"  # distortion of the training codes (adversarial ones for abf/iabf)
TRAIN_TC = "train/tc"                # discriminator's TC estimate (eq. 14), iabf only
TRAIN_DISC_LOSS = "train/disc_loss"  # discriminator cross-entropy (eq. 13), iabf only
VAL_DISTORTION = "val/distortion"    # Table 1's measure on the whole validation set, at the test eps
VAL_BER = "val/bit_error_rate"
VAL_ENTROPY = "val/marginal_entropy"  # mean over bits of H(Y_d) in bits, from batch marginals (eq. 11)
VAL_MI = "val/mutual_info"           # sum_d H(Y_d) - H(Y_d|X) in bits (first term of eq. 10)
BEST_VAL_DISTORTION = "best/val_distortion"
BEST_EPOCH = "best/epoch"
TEST_DISTORTION = "test/distortion"  # Table 1: best-by-validation model, one channel sample at test eps
TEST_BER = "test/bit_error_rate"
TEST_ENTROPY = "test/marginal_entropy"
TEST_MI = "test/mutual_info"
EXAMPLES_PER_S = "sys/examples_per_s"     # training examples per second of training time, this epoch
EPOCH_SECONDS = "sys/epoch_seconds"       # the whole epoch: training, validation (and test at the end)
EVAL_SECONDS = "sys/eval_seconds"         # validation (and test) evaluation, this epoch
CHECKPOINT_SECONDS = "sys/checkpoint_seconds"  # writing this epoch's checkpoint
ARTIFACT_SECONDS = "sys/artifact_seconds"      # the last epoch: reconstruction grid and Markov chain
WALL_SECONDS = "sys/wall_seconds"         # since the trial started, cumulative across restarts
GPU_SECONDS = "sys/gpu_seconds"           # wall seconds x the trial's GPU fraction (0 on CPU)
GPU_PEAK_MB = "sys/gpu_peak_mb"           # peak GPU memory allocated by the trial (CUDA only)
# the test number that reports what a validation metric chose: a study's `metric` judges on validation, and
# its confirmation's comparisons (analysis/sequential.py) are made on this
TESTED = {VAL_DISTORTION: TEST_DISTORTION, BEST_VAL_DISTORTION: TEST_DISTORTION, VAL_BER: TEST_BER,
          VAL_ENTROPY: TEST_ENTROPY, VAL_MI: TEST_MI}
# a finished run's checkpoint among its MLflow artifacts (and in every Tune checkpoint): what
# `analysis.best` points at, so it is named here, where analysis can read it without Ray
STATE = "checkpoint.pt"

def seed_key(seed: int, key: str) -> str:
    """A stacked trial's per-seed copy of a metric (see stacked.seed_metrics): seed3/val/distortion."""
    return f"seed{seed}/{key}"
