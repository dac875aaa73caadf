"""Creates crm.db: an updatable registry table and an insert-only activity log. Idempotent: running it
again changes nothing (INSERT OR IGNORE on the activity log's event_id)."""
import os
import sqlite3

# Next to this script, wherever it is run from (the example's bqsync.toml names it relative to itself).
db = sqlite3.connect(os.path.join(os.path.dirname(os.path.abspath(__file__)), "crm.db"))
db.executescript("""
CREATE TABLE IF NOT EXISTS registry (id TEXT PRIMARY KEY, kind TEXT, external_ref TEXT, label TEXT,
                                     created_at TEXT, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS activity (event_id TEXT PRIMARY KEY, entity_id TEXT, kind TEXT, text TEXT, score REAL,
                                     tags TEXT, created_at TEXT NOT NULL);
INSERT OR REPLACE INTO registry VALUES
  ('p-001', 'person', 'crm:1001', 'Ada', '2026-01-01 00:00:00', '2026-11-22 09:00:00'),
  ('o-001', 'org', 'crm:2001', 'Analytical Engines', '2026-01-01 00:00:00', '2026-11-22 09:00:00');
INSERT OR IGNORE INTO activity VALUES
  ('act-1', 'p-001', 'login', 'logged in', 1.0, '["web"]', '2026-11-22 09:00:00'),
  ('act-2', 'p-001', 'click', 'opened a file', 0.5, '[]', '2026-11-22 09:00:10');
""")
db.commit()
print("crm.db: 2 registry rows, 2 activity rows")
