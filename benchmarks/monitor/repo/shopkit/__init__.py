"""shopkit: a small made-up shop back office (the monitor benchmark's repository)."""
