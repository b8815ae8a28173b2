"""exchange: exchange servers (consensus replica + order books) serving traders over gRPC."""
