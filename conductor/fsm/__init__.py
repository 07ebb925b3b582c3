"""The provision state machine: vocabulary, table (data) and queries."""
