"""`vitedge tune`: the fastest artifact of an export on this machine that passes the accuracy gates.

Four steps, each resumable: plan the candidates (target x precision, plus knob variants: INT8
that keeps the most sensitive blocks float, INT8 with another SmoothQuant alpha, OpenVINO in
throughput mode) and skip, with a reason, those that cannot run here or would only repeat
another; build them (cached like recipe steps: an unchanged candidate is reused); bench all
of them against the PyTorch reference in one interleaved run; choose the fastest that passes
every gate. OUT/best/ is a copy of the chosen artifact (`vitedge.load`
opens it), OUT/tune.json says what happened to every candidate and why, and the HTML report
gets a Pareto plot (accuracy drop vs p50 latency per batch).

The package, by job: `candidates` (device facts, planning, knob variants, duplicate rules),
`sensitivity` (per-block INT8 sensitivity), `run` (the pipeline: checks, builds, one bench),
`choice` (outcomes read from the report, the choice, OUT/best/), `files` (the output layout).
This module re-exports what the CLI, recipes, report_cli and tests use.
"""

from vitedge.tune.candidates import (
    KNOBS,
    PLANNED_VARIANTS,
    VARIANT_ALPHA,
    Candidate,
    DeviceFacts,
    keep_float_variants,
    knob_set,
    plan_candidates,
    repeats_its_base,
    repeats_its_base_at_runtime,
    skip_duplicates,
    smoothquant_alpha_variants,
    throughput_variants,
)
from vitedge.tune.choice import choose, fail_uncheckable, read_outcomes, score, split_gates
from vitedge.tune.files import BEST_DIR, CANDIDATES_DIR, REPORT_DIR, SENSITIVITY_FILE, TUNE_FILE, TUNE_SCHEMA
from vitedge.tune.run import DEFAULT_GATES_LABELLED, DEFAULT_GATES_UNLABELLED, tune
from vitedge.tune.sensitivity import ACT_RANGE_IMAGES, SENSITIVITY_IMAGES, block_sensitivity

__all__ = [
    "ACT_RANGE_IMAGES", "BEST_DIR", "CANDIDATES_DIR", "DEFAULT_GATES_LABELLED", "DEFAULT_GATES_UNLABELLED", "KNOBS",
    "PLANNED_VARIANTS", "REPORT_DIR", "SENSITIVITY_FILE", "SENSITIVITY_IMAGES", "TUNE_FILE", "TUNE_SCHEMA",
    "VARIANT_ALPHA",
    "Candidate", "DeviceFacts", "block_sensitivity", "choose", "fail_uncheckable", "keep_float_variants",
    "knob_set", "plan_candidates", "read_outcomes", "repeats_its_base", "repeats_its_base_at_runtime", "score",
    "skip_duplicates", "smoothquant_alpha_variants", "split_gates", "throughput_variants", "tune",
]
