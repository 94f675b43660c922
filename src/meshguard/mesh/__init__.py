"""Sans-IO composition: packet demux, membership to WireGuard peers, trust policy."""
