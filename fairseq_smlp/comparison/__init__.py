"""The comparison harness: FLOPs accounting, the compared systems, the report."""
