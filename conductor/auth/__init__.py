"""Who may call the API: bearer tokens with roles.

* :mod:`conductor.auth.roles`: the roles and what each allows;
* :mod:`conductor.auth.tokens`: creating, listing, revoking and checking
  tokens (stored as SHA-256 hashes only);
* :mod:`conductor.auth.tokenfile`: the local admin token file of
  ``conductor up`` (light: the CLI imports it).
"""
