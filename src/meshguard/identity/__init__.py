"""Identity, trust store, org certificates and mesh addresses (sans-IO except store.py).

Modules: addressing (mesh IPv4/IPv6, org domains, IPv4 collision rule), names (DNS labels),
certificate (NodeCertificate codec and rules), wgkey (the identity's vouch for its WireGuard
key), store (key files and atomic writes), trust (TrustStore, revocations, admission),
keygen (creating and rotating keys, issuing certificates), overview (`meshguard show`),
errors (typed errors).
"""
