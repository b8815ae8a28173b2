"""traders: gRPC trader clients (load generator and interactive trader)."""
