"""PostgreSQL adapters: connection settings, schema, read-model writers and readers."""
