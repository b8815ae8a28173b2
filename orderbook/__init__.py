"""orderbook: a Liquibook-compatible limit order book and matching engine (no I/O, no consensus)."""
