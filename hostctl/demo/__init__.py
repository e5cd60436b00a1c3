"""The demo: emulated hosts (libvirt test driver, HTTP services, traffic) as local agent processes, and their site."""
