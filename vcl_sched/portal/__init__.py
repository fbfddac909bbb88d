"""The portal (SPEC §8): students, teachers and admins use the lab from a browser.

Starlette pages over the same service layer as the `vcl` command; what changes a host goes through the
collection's playbooks with ansible-runner, exactly as ``vcl ... --run`` does, on behalf of the logged-in user
(``acting_user``). See docs/portal.md.
"""
