"""Database access: async engine, sessions, ORM models, outbox (schema: Alembic)."""
