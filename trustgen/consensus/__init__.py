"""Consensus: identities, canonical signed messages, ledger feeds, assignment, tally, audit."""
