"""Arena's storage: SQLAlchemy 2.0 models, session factory and query functions (no framework imports)."""
