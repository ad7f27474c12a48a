"""The ledger explorer: read-only web pages over one node's ledger and blobs (`trustgen explorer`)."""
