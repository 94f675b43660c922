"""The asyncio shell: sockets, TUN, netlink, control server, signals."""
