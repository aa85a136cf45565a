"""`vitedge run RECIPE.yaml`: export -> compile (several targets) -> bench -> gates -> reports.

A recipe is validated in full (schema, paths, targets, gates) before any work starts.
Paths written in a recipe are relative to the recipe file; paths given with `--set` are
relative to the current directory; the default output dir is `runs/<name>/` under the
current directory. Each step records a hash of its inputs in OUT_DIR/vitedge-run.json and
is skipped on the next run when that hash is unchanged and its output still verifies.
docs/bench.md lists every key.

The package, by job: `load` (schema, YAML, overrides, checks) and `run` (the resumable
pipeline); this module re-exports what the CLI and tests use.
"""

from vitedge.recipe.load import (
    RECIPE_VERSION,
    RESOLVED_FILE,
    STATE_FILE,
    compile_options_schema,
    load_recipe,
    recipe_schema,
    safe_yaml,
)
from vitedge.recipe.run import run_recipe

__all__ = ["RECIPE_VERSION", "RESOLVED_FILE", "STATE_FILE", "compile_options_schema", "load_recipe",
           "recipe_schema", "run_recipe", "safe_yaml"]
