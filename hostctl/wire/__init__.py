"""The wire: the host model, JSON-RPC 2.0 framing and SEV policy names, shared by both ends."""
