-- hoard PostgreSQL schema, version 5: a table of notifications, for the portable profile
-- (postgres::PostgresProfile::Portable), whose engines have no LISTEN/NOTIFY: `notify` inserts a
-- row and every process polls the rows after the newest it has seen (see poller.rs). The full
-- profile never writes it; it exists in every schema so that one database can be opened with
-- either profile.
CREATE TABLE notifications (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sent_at_ms BIGINT NOT NULL,
    -- The notification as JSON text (store::Notification).
    payload    TEXT NOT NULL
);

CREATE INDEX notifications_by_sent_at ON notifications (sent_at_ms);
