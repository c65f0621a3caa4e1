"""Design-space exploration: the sweep's spec, its points' workers, the runner and the report."""
