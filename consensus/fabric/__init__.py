"""consensus.fabric: one-sided memory fabrics (emulated shared memory, pyverbs RDMA, in-process)."""
