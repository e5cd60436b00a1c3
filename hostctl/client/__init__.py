"""Client side: the site file, links to host agents and text rendering for people."""
