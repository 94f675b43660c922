"""Identity, trust store, org certificates and mesh addresses."""
