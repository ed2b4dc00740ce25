//! Persistent state in the state directory (default /var/lib/detector): journal cursors, file
//! offsets, the engine snapshot and the ban ledger. Writes are atomic (temp file + rename).
