"""The shared test harness: server processes, twin comparison, process facts, golden vectors, strategies."""
