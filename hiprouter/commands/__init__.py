"""CLI sub-commands; each module defines `register(group)` adding its commands."""
