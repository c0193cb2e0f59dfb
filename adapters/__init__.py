"""I/O: PostgreSQL, the embedded server, Stripe and sockets."""
