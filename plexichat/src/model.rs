//! The chat's domain: what users, channels and messages are, and which values are valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::config::Limits;

pub type UserId = i64;
pub type ChannelId = i64;
pub type MessageId = i64;

/// Milliseconds since the Unix epoch; on the wire an RFC 3339 UTC string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn plus(self, duration: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn to_rfc3339(self) -> String {
        let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0));
        humantime::format_rfc3339_millis(time).to_string()
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339(&text).map_err(D::Error::custom)?;
        let since_epoch = time.duration_since(UNIX_EPOCH).map_err(D::Error::custom)?;
        Ok(Self(i64::try_from(since_epoch.as_millis()).map_err(D::Error::custom)?))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Channel {
    pub id: ChannelId,
    pub name: String,
    pub created_by: UserId,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub member_count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub author_id: UserId,
    pub author: String,
    pub body: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The node that accepted the message.
    pub node_id: String,
}

/// A message as handed to the store, before it has an id.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel_id: ChannelId,
    pub author_id: UserId,
    pub author: String,
    pub body: String,
    pub created_at: Timestamp,
    pub node_id: String,
}

/// The user behind a session token, and until when the token holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user: User,
    pub expires_at: Timestamp,
}

/// What a node says about itself in each heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHeartbeat {
    pub node_id: String,
    pub generation: i64,
    pub addr: String,
    pub version: String,
}

/// A cluster member as recorded by its heartbeats. `last_seen` and `up` come from the
/// database's clock, the one clock every node shares: the nodes' own clocks may
/// disagree (VMs resumed after a pause, edge boxes without NTP).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub heartbeat: NodeHeartbeat,
    pub last_seen: Timestamp,
    /// The last heartbeat is within the lease.
    pub up: bool,
}

/// Why a value was refused: becomes a 422 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn validate_username(name: &str, limits: &Limits) -> Result<(), Invalid> {
    let length = name.chars().count();
    if length < limits.username_min || length > limits.username_max {
        return Err(Invalid(format!(
            "username must be {} to {} characters",
            limits.username_min, limits.username_max
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(Invalid(
            "username may only contain A-Z, a-z, 0-9, '_', '.' and '-'".into(),
        ));
    }
    Ok(())
}

pub fn validate_password(password: &str, limits: &Limits) -> Result<(), Invalid> {
    let length = password.chars().count();
    if length < limits.password_min || length > limits.password_max {
        return Err(Invalid(format!(
            "password must be {} to {} characters",
            limits.password_min, limits.password_max
        )));
    }
    Ok(())
}

/// Returns the name as stored: surrounding white space removed.
pub fn validate_channel_name<'a>(name: &'a str, limits: &Limits) -> Result<&'a str, Invalid> {
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > limits.channel_name_max {
        return Err(Invalid(format!(
            "channel name must be 1 to {} characters",
            limits.channel_name_max
        )));
    }
    Ok(name)
}

/// Returns the body as stored: surrounding white space removed.
pub fn validate_message_body<'a>(body: &'a str, limits: &Limits) -> Result<&'a str, Invalid> {
    let body = body.trim();
    let length = body.chars().count();
    if length == 0 || length > limits.message_body_max {
        return Err(Invalid(format!(
            "message body must be 1 to {} characters after trimming",
            limits.message_body_max
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn usernames() {
        for ok in ["abc", "a_b.c-d", "Z9Z", &"x".repeat(32)] {
            assert_eq!(validate_username(ok, &limits()), Ok(()), "{ok}");
        }
        for bad in ["ab", &"x".repeat(33), "has space", "émile", "semi;colon", ""] {
            assert!(validate_username(bad, &limits()).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(validate_password("1234567", &limits()).is_err());
        assert!(validate_password("12345678", &limits()).is_ok());
        assert!(validate_password(&"é".repeat(128), &limits()).is_ok());
        assert!(validate_password(&"é".repeat(129), &limits()).is_err());
    }

    #[test]
    fn channel_names_are_trimmed() {
        assert_eq!(validate_channel_name("  general ", &limits()), Ok("general"));
        assert!(validate_channel_name("   ", &limits()).is_err());
        assert!(validate_channel_name(&"c".repeat(65), &limits()).is_err());
        assert!(validate_channel_name(&"c".repeat(64), &limits()).is_ok());
    }

    #[test]
    fn message_bodies_are_trimmed_and_bounded() {
        assert_eq!(validate_message_body("\n hi \t", &limits()), Ok("hi"));
        assert!(validate_message_body(" \n\t ", &limits()).is_err());
        assert!(validate_message_body(&"m".repeat(4000), &limits()).is_ok());
        assert!(validate_message_body(&"m".repeat(4001), &limits()).is_err());
        let padded = format!("  {}  ", "m".repeat(4000));
        assert!(validate_message_body(&padded, &limits()).is_ok());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(1_700_000_000_123).to_rfc3339(), "2023-11-14T22:13:20.123Z");
        let parsed: Timestamp = serde_json::from_str("\"2023-11-14T22:13:20.123Z\"").unwrap();
        assert_eq!(parsed, Timestamp(1_700_000_000_123));
        assert_eq!(Timestamp(1000).plus(Duration::from_secs(2)), Timestamp(3000));
    }
}
