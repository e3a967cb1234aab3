"""Physics-based paired-data simulator, multi-site scenarios, the local simulation driver and
the ClientApp it installs (the site's app plus simulated node settings and drills)."""
