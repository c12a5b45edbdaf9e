"""Images: registry client, verified content store, safe layer unpacking.

Not built yet (issue 3)."""
