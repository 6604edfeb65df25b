"""Embedded configs (``default.py``) and the base every config starts from."""
