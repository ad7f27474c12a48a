"""Verifiable training: job specs, data selection, SPSA and local-SGD trainers, robust
aggregation, checkpoints, replay and step checks. Imports engines and consensus, never the network."""
