"""Client side: wrk runs, load generators, run history and load traces."""
