"""``/v1/datasets``: streamed upload and download, metadata, listing, delete."""
