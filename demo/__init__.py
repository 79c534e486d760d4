"""Demo helpers: an embedded PostgreSQL server and a sample D2C retention database."""
