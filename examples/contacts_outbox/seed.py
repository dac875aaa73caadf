"""Creates contacts.db: the application's outbox table, with every row dirty."""
import os
import sqlite3

# Next to this script, wherever it is run from (the example's bqsync.toml names it relative to itself).
db = sqlite3.connect(os.path.join(os.path.dirname(os.path.abspath(__file__)), "contacts.db"))
db.executescript("""
CREATE TABLE IF NOT EXISTS contacts (
  id TEXT PRIMARY KEY, name TEXT, email TEXT, phone TEXT, updated_at TEXT,
  version INTEGER NOT NULL, dirty INTEGER NOT NULL DEFAULT 1, deleted INTEGER NOT NULL DEFAULT 0);
INSERT OR REPLACE INTO contacts VALUES
  ('c-1', 'Ada Lovelace', 'ada@example.com', '+44 1', '2026-11-22 09:00:00', 1, 1, 0),
  ('c-2', 'Alan Turing', 'alan@example.com', '+44 2', '2026-11-22 09:00:00', 3, 1, 0),
  ('c-3', 'Grace Hopper', 'grace@example.com', '+1 3', '2026-11-22 09:00:00', 2, 1, 1);
""")
db.commit()
print("contacts.db: 3 dirty rows (one soft-deleted)")
