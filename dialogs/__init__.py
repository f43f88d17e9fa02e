"""The intake conversation: a pure core (no I/O) that turns state + message into state, replies, effects."""
