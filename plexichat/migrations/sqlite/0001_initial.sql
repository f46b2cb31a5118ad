-- Times are milliseconds since the Unix epoch.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
-- Names are unique regardless of case; queries compare lower() against lower().
CREATE UNIQUE INDEX users_by_name ON users (lower(username));

-- Only a hash of each token is kept: a leaked database yields no usable session.
CREATE TABLE sessions (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE channels (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    created_by INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX channels_by_name ON channels (lower(name));

CREATE TABLE memberships (
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id)
) WITHOUT ROWID;

CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    author_id  INTEGER NOT NULL REFERENCES users (id),
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    node_id    TEXT    NOT NULL
);
CREATE INDEX messages_by_channel ON messages (channel_id, id);

CREATE TABLE nodes (
    node_id    TEXT    PRIMARY KEY,
    generation INTEGER NOT NULL,
    addr       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    last_seen  INTEGER NOT NULL
);
