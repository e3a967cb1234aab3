"""Physics-based paired-data simulator, multi-site scenarios and the local simulation driver."""
