"""Training: the loop a unit runs (loop, engine), its Ray adapters (worker), the stage driver (run), the unit store."""
