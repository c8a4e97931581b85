"""Embedding tables behind one interface: the full table and compressed drop-in replacements."""
