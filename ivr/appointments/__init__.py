"""Appointments: when no agent can answer soon, the caller books a slot and is called back then.

* ``slots`` -- slots cut from the service's opening hours (pure).
* ``speech`` -- how a slot is said in French with Asterisk's sounds (pure).
* ``requests`` -- the data the flow and the store exchange (pure).
* ``flow`` -- the IVR sub-flow: offer slots one by one, confirm, book (pure generator).
* ``store`` -- bookings in Redis: atomic capacity, one booking per number, due list.

Nothing is imported here, so that ``ivr.domain.ivr_ops`` can import ``requests`` without a
cycle through ``flow``.
"""
