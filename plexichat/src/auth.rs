//! Passwords (argon2id, hashed off the async workers), session tokens (random, stored
//! only as SHA-256) and the extractor that turns a bearer token into a user.

use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{
    Output, ParamsString, PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::cache::TokenHash;
use crate::config::AuthSettings;
use crate::error::ApiError;
use crate::model::{Timestamp, User};

/// Hashes and verifies passwords with the profile's argon2id cost.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    /// Verified against when the user does not exist, so an unknown name costs
    /// the same time as a wrong password.
    decoy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let decoy_hash = decoy_hash(&params)?;
        Ok(Self {
            argon2: Argon2::new(ALGORITHM, VERSION, params),
            decoy_hash: decoy_hash.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || hash_with(&argon2, &password))
            .await
            .map_err(|err| ApiError::Internal(err.into()))?
            .map_err(ApiError::Internal)
    }

    /// True when `password` matches `stored`; with no stored hash, spends the same
    /// effort and answers false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let argon2 = self.argon2.clone();
        let (hash, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.decoy_hash.to_string(), false),
        };
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|err| ApiError::Internal(err.into()))?;
        Ok(real && matches)
    }
}

const ALGORITHM: Algorithm = Algorithm::Argon2id;
const VERSION: Version = Version::V0x13;

/// A hash in the stored format, with `params`' cost and a random salt, whose output is
/// random bytes rather than any password's: verifying against it costs what verifying a
/// real hash costs, and nothing matches it. Made rather than computed, so that starting a
/// node does not pay for an argon2 hash (a second of a VM's boot under emulation).
fn decoy_hash(params: &Params) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    OsRng.fill_bytes(&mut output);
    let decoy = PasswordHash {
        algorithm: ALGORITHM.ident(),
        version: Some(VERSION.into()),
        params: ParamsString::try_from(params).map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|err| anyhow::anyhow!("a decoy hash: {err}"))?),
    };
    Ok(decoy.to_string())
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("hashing a password: {err}"))
}

/// A new opaque session token: 256 random bits, hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The caller of an authenticated route.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub token_hash: TokenHash,
    /// When the token stops working; a WebSocket opened with it closes then.
    pub expires_at: Timestamp,
}

impl AuthUser {
    /// Resolves a token (cached), then charges the user's rate limit.
    pub async fn from_token(app: &App, token: &str) -> Result<Self, ApiError> {
        let hash = token_hash(token);
        let now = Timestamp::now();
        let session = app
            .caches
            .session(hash, app.store.session(&hash, now))
            .await?
            .filter(|session| session.expires_at > now)
            .ok_or(ApiError::Unauthorized("unknown or expired token"))?;
        app.rate_limits.check_api(session.user.id)?;
        Ok(Self {
            user: session.user,
            token_hash: hash,
            expires_at: session.expires_at,
        })
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<App>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = Arc::<App>::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized("expected Authorization: Bearer <token>"))?;
        Self::from_token(&app, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> AuthSettings {
        AuthSettings {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthSettings::default()
        }
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let passwords = Passwords::new(&cheap()).unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(passwords
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!passwords.verify("wrong horse".into(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_never_verifies_even_with_the_decoy_password() {
        let passwords = Passwords::new(&cheap()).unwrap();
        assert!(!passwords
            .verify("decoy password never matches".into(), None)
            .await
            .unwrap());
    }

    /// An unknown name costs what a wrong password costs: verifying either hashes the
    /// attempt with the same algorithm, cost and output length.
    #[tokio::test]
    async fn the_decoy_costs_what_a_real_hash_costs() {
        let passwords = Passwords::new(&cheap()).unwrap();
        let real = passwords.hash("correct horse".into()).await.unwrap();
        let (real, decoy) = (
            PasswordHash::new(&real).unwrap(),
            PasswordHash::new(&passwords.decoy_hash).unwrap(),
        );
        assert_eq!(decoy.algorithm, real.algorithm);
        assert_eq!(decoy.version, real.version);
        assert_eq!(decoy.params, real.params, "m, t and p");
        assert_eq!(decoy.salt.map(|s| s.len()), real.salt.map(|s| s.len()));
        assert_eq!(decoy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        // And it really is verified, not refused for being malformed: Argon2 reads it.
        assert!(Argon2::default()
            .verify_password(b"anything", &decoy)
            .is_err_and(|err| err == argon2::password_hash::Error::Password));
    }

    #[test]
    fn tokens_are_unique_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
