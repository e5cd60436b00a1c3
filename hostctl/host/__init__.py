"""Host side: one libvirt host, its domains' XML and the worker vCPU drivers."""
