"""exchange.proto: the trader API (exchange.proto) and its generated Python stubs."""
