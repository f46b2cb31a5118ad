-- Times are milliseconds since the Unix epoch, as in the SQLite schema: both stores
-- share their queries.
CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT   NOT NULL,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_by_name ON users (lower(username));

-- Only a hash of each token is kept: a leaked database yields no usable session.
CREATE TABLE sessions (
    token_hash BYTEA  PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE channels (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT   NOT NULL,
    created_by BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX channels_by_name ON channels (lower(name));

CREATE TABLE memberships (
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  BIGINT NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);

CREATE TABLE messages (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    author_id  BIGINT NOT NULL REFERENCES users (id),
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    node_id    TEXT   NOT NULL
);
CREATE INDEX messages_by_channel ON messages (channel_id, id);

CREATE TABLE nodes (
    node_id    TEXT   PRIMARY KEY,
    generation BIGINT NOT NULL,
    addr       TEXT   NOT NULL,
    version    TEXT   NOT NULL,
    last_seen  BIGINT NOT NULL
);
