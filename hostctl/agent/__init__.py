"""Host side: the agent that owns one host (JSON-RPC server and its update stream), its audit log and probes."""
