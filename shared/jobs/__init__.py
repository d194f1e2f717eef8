"""The job lifecycle: pure rules (``states``) and the one writer of ``jobs.state`` (``store``)."""
