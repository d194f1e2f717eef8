"""The keys of the whole-database advisory locks Stratus's services take, in one place.

PostgreSQL has one space of advisory lock keys per database, shared by every session: two
uses with the same key exclude each other. A scheduler holds ``LEADER`` for as long as it
leads, on a connection of its own, so a loop of the leader that tried the same key on
another connection would never get it. Each use has its own key here, and
``tests/unit/test_advisory_keys.py`` checks that they stay distinct. (The per-tenant and
per-workflow locks of the migrations' functions use the two-key form,
``pg_advisory_xact_lock(int, int)``, a space apart from these bigints.)
"""

from __future__ import annotations

# A session lock: the scheduler that holds it is the leader (``services.scheduler.leader``).
LEADER = 0x5354_5241_5455_5301  # "STRATUS" + 1
# A session lock: one scheduler vacuums the churned tables at a time (``shared.db.maintenance``).
MAINTENANCE = 0x5354_5241_5455_5302  # "STRATUS" + 2
# Transaction locks: one autoscaling decision and one preemption at a time.
AUTOSCALER = 0x5354_0007
PREEMPT = 0x5354_0020

ALL = {"LEADER": LEADER, "MAINTENANCE": MAINTENANCE, "AUTOSCALER": AUTOSCALER, "PREEMPT": PREEMPT}
