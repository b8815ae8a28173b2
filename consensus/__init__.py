"""consensus: Mu-style state machine replication over a one-sided memory fabric."""
