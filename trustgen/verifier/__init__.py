"""Verifier side: fingerprints (LSH), comparators, prefill and re-execution checks, calibration."""
