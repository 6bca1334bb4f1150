"""Fleet: roll optimized models out to edge devices — signed (TUF), staged in waves, gated on
the model's own health, rolled back automatically, safe offline (see docs/fleet.md).

The control plane (``edgeshift fleet serve``) keeps its state in SQLAlchemy (SQLite or
PostgreSQL); agents (``edgeshift agent``) serve the model with edgeshift's own server.
"""
