"""Access control and routes: service policies, org-signed policies, their compiled form.

See docs/policy.md.
"""
