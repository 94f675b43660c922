"""Where seeds come from: literal addresses, host names, DNS TXT records and mDNS on the LAN
(sans-IO: the daemon does the lookups and hands the answers in; docs/seeds.md)."""
