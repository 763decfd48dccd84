"""Benchmark scripts of pdenets (figures are printed, never asserted in tests)."""
