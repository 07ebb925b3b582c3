"""Business operations shared by the API, the CLI and the conductors.

Views and commands parse and serialise; the rules live here.
"""
