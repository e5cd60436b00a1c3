"""Host side: the agent that owns one host (JSON-RPC server), its audit log and latency probes."""
