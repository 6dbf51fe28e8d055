"""The registry database's schema migrations (Alembic): ``env.py``, the revisions in ``versions/`` and what
they share. ``app.registry.schema`` runs them; ``heritage-match db`` is their command line."""
