"""trustgen: verifiable generative AI in trustless networks."""

__version__ = "0.1.0"
