"""The conductor side: workers that take a node's lock and drive its transition."""
