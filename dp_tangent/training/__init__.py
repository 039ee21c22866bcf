"""Private training: the delta of a tangent model on one shard, with DP-SGD done by Opacus.

Order of operations (the privacy contract):

1. validate everything and plan the run (``plan``): sample rate q = 1/ceil(n/B) (Opacus's Poisson
   rate for expected batch size B), steps T = epochs · ceil(n/B), noise multiplier (given, or
   calibrated for the target epsilon with the chosen accountant);
2. reserve the planned event PoissonSampled(q, Gaussian(sigma)) composed T times in the ledger,
   which refuses it if the shard's budget would be exceeded -- before any record is read;
3. train (``deltas``, ``sgd``): frozen-prefix features computed once, then Opacus's
   parts (Poisson ``DPDataLoader``, clipping at C, Gaussian noise of std sigma·C on the summed
   gradient, ``BatchMemoryManager`` for physical batches), the clipped sum from per-example NTK
   Grams (default), Opacus's hooks or ghost clipping;
4. write the component atomically and mark the reservation completed (``write``). Any failure,
   Ctrl-C included, marks it failed: the budget stays spent, and no component file appears.

``epsilon = inf`` trains without clipping or noise, for comparison only: the component and the
ledger say NON-PRIVATE, and a shard with a finite budget refuses it.

Modules: ``config`` (what a run is asked for), ``plan``, ``validation`` (data mistakes refused
before anything is reserved), ``sgd`` (the loop), ``secure_random`` (the noise and Poisson batches
of private runs: ChaCha20 under a fresh OS key), ``deltas`` (a worker's part), ``write`` (the
driver's part), ``in_process`` (all of it in this process), ``ntk_gram`` (per-example NTK Grams and
clipping from them), ``per_sample`` and ``grad_samplers`` (exact per-sample gradients, Opacus samplers
for tangent twins), ``features`` (the frozen-prefix
cache), ``losses``, ``evaluation``, ``privacy_audit`` (the empirical audit) and ``executors``
(where tasks run).
"""

from ..lazy import lazy_package

# imported on first use: a recipe is read and checked (``dp_tangent.recipes``, which needs ``config`` and
# ``losses``) before torch and Opacus load, so that a mistake in it is reported at once
_LAZY = {
    **dict.fromkeys(("GRAD_SAMPLE_MODES", "PrivacySpec", "ProgressFn", "TrainConfig", "TrainingError"), ".config"),
    **dict.fromkeys(("TrainedDeltas", "train_deltas"), ".deltas"),
    "train_component": ".in_process",
    **dict.fromkeys(("Plan", "TrainingTask", "plan_run", "plan_task", "reservation_request"), ".plan"),
    **dict.fromkeys(("NOISE_GENERATOR", "fit", "run_sgd"), ".sgd"),
    **dict.fromkeys(("TrainedComponent", "write_component"), ".write"),
}

__all__ = ["GRAD_SAMPLE_MODES", "NOISE_GENERATOR", "Plan", "PrivacySpec", "ProgressFn", "TrainConfig",
           "TrainedComponent", "TrainedDeltas", "TrainingError", "TrainingTask", "fit", "plan_run", "plan_task",
           "reservation_request", "run_sgd", "train_component", "train_deltas", "write_component"]

lazy_package(__name__, _LAZY)
