"""The parts of report.py (the command line): reading a Tune experiment folder (experiment, frames),
analysing it (analysis), tables (tables), figures (figures), writing the report folder (writing)
and the component ablation's Ray runs (ablation_runs). Imports hscmae, never the reverse."""
