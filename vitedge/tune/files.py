"""Where tune writes what under its output dir, and the schema name of tune.json."""

TUNE_FILE = "tune.json"
TUNE_SCHEMA = "vitedge.tune/result"
BEST_DIR = "best"
CANDIDATES_DIR = "candidates"
REPORT_DIR = "report"
SENSITIVITY_FILE = "sensitivity.json"
