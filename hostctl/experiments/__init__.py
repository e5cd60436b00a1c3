"""Client side: experiments run against a site (security overhead, elastic versus fixed)."""
