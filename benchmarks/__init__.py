"""Benchmark scripts of pdenets (figures are printed, never asserted in tests)."""

# before torch loads: pdenets sets OMP_WAIT_POLICY=PASSIVE unless set (see pdenets._threads)
import pdenets._threads  # noqa: F401
