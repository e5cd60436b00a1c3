"""Client side: the `hostctl` command line."""
