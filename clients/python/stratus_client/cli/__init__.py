"""``stratus``, the command line of Stratus (typer and rich), built on the SDK's public
methods only. Installed with the ``cli`` extra: ``pip install './clients/python[cli]'``."""
