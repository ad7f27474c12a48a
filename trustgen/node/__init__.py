"""Node side: generation engines, model registry, determinism, (later) daemon and RPC."""
