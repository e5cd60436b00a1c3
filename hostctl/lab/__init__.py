"""The lab site: real guests (Debian's kernel, busybox, qemu-guest-agent) under libvirtd + QEMU on this machine.

Like the demo, an embedded site with a launcher (`hostctl lab up|status|down`) and a site file; unlike the demo,
its CVMs are real QEMU guests scaled through their real guest agent. TCG, no memory encryption: the SEV-SNP
guests carry dittotui's SNP metadata, not SNP hardware.
"""
