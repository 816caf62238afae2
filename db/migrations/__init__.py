"""Alembic migrations: env.py, the revision template and versions/ (run by db.migrate, no alembic.ini)."""
