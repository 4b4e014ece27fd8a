"""The Starlette receiver."""
