"""The web console at ``/console``: a page and its assets, served by the gateway itself."""
