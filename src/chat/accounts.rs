//! Accounts and sessions: REGISTER, LOGIN, AUTH, LOGOUT.
//!
//! Passwords are kept only as Argon2id PHC strings; tokens are 256 random bits handed to
//! the client once and stored only as their SHA-256. Hashing runs on a reader thread; the
//! insert that follows goes to the writer. A wrong password and an unknown user get the
//! same answer, after the same amount of hashing work.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ops::{obj, sid, OpResult, Reply, Settings, Step, WriterState};
use crate::chat::ops::Effect;
use crate::protocol::ApiError;
use crate::store::{Db, RowExt};
use crate::time::now_ms;

/// An authenticated connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: i64,
    pub username: String,
    pub token_hash: String,
}

/// Usernames: 1-32 characters of letters, digits, `_`, `-`, `.`.
pub fn validate_username(u: &str) -> Result<(), ApiError> {
    let ok = !u.is_empty()
        && u.chars().count() <= 32
        && u.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "username must be 1-32 letters, digits, '_', '-' or '.'",
        ))
    }
}

/// Passwords: 8 to 1024 bytes (the upper bound caps hashing cost).
pub fn validate_password(p: &str) -> Result<(), ApiError> {
    if (8..=1024).contains(&p.len()) {
        Ok(())
    } else {
        Err(ApiError::bad_request("password must be 8 to 1024 bytes"))
    }
}

/// The key that makes usernames unique ignoring case.
pub fn username_key(u: &str) -> String {
    u.to_lowercase()
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so both failures cost the same.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password").unwrap_or_default())
}

fn bad_credentials() -> ApiError {
    ApiError::unauthenticated("wrong username or password")
}

pub fn register(db: &mut dyn Db, username: String, password: String) -> OpResult<Step> {
    let taken = db.query_row(
        "SELECT 1 FROM users WHERE username_key = ?",
        &[username_key(&username).into()],
    )?;
    if taken.is_some() {
        return Err(ApiError::conflict("username is taken").into());
    }
    let password_hash = hash_password(&password)?;
    Ok(Step::Write(super::ops::Op::CreateUser {
        username,
        password_hash,
    }))
}

pub fn login(db: &mut dyn Db, username: String, password: String) -> OpResult<Step> {
    let row = db.query_row(
        "SELECT user_id, username, password_hash FROM users WHERE username_key = ?",
        &[username_key(&username).into()],
    )?;
    match row {
        Some(r) if verify_password(&password, &r.text(2)?) => Ok(Step::Write(super::ops::Op::CreateToken {
            user_id: r.int(0)?,
            username: r.text(1)?,
        })),
        Some(_) => Err(bad_credentials().into()),
        None => {
            verify_password(&password, decoy_hash());
            Err(bad_credentials().into())
        }
    }
}

pub fn auth(db: &mut dyn Db, token: &str) -> OpResult<Step> {
    let token_hash = hash_token(token);
    let row = db.query_row(
        "SELECT u.user_id, u.username FROM tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = ? AND t.expires_at > ?",
        &[token_hash.clone().into(), now_ms().into()],
    )?;
    let Some(r) = row else {
        return Err(ApiError::unauthenticated("invalid or expired token").into());
    };
    let session = Session {
        user_id: r.int(0)?,
        username: r.text(1)?,
        token_hash,
    };
    let data = obj([
        ("user_id", sid(session.user_id)),
        ("username", Value::String(session.username.clone())),
    ]);
    Ok(Step::Done(data, Effect::Session(session)))
}

fn issue_token(db: &mut dyn Db, s: &Settings, user_id: i64, username: String) -> OpResult<Reply> {
    let token = new_token();
    let token_hash = hash_token(&token);
    let now = now_ms();
    db.execute(
        "INSERT INTO tokens (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        &[
            token_hash.clone().into(),
            user_id.into(),
            now.into(),
            (now + s.token_ttl_ms).into(),
        ],
    )?;
    let data = obj([
        ("user_id", sid(user_id)),
        ("username", Value::String(username.clone())),
        ("token", Value::String(token)),
    ]);
    Ok((
        data.into(),
        Effect::Session(Session {
            user_id,
            username,
            token_hash,
        }),
    ))
}

pub fn create_user(
    db: &mut dyn Db,
    s: &Settings,
    w: &mut WriterState,
    username: String,
    password_hash: String,
) -> OpResult<Reply> {
    let user_id = w.next_id(db)?;
    let inserted = db.execute(
        "INSERT INTO users (user_id, username, username_key, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        &[
            user_id.into(),
            username.as_str().into(),
            username_key(&username).into(),
            password_hash.into(),
            now_ms().into(),
        ],
    );
    match inserted {
        Ok(_) => issue_token(db, s, user_id, username),
        Err(crate::store::StoreError::Conflict(_)) => Err(ApiError::conflict("username is taken").into()),
        Err(e) => Err(e.into()),
    }
}

pub fn create_token(db: &mut dyn Db, s: &Settings, user_id: i64, username: String) -> OpResult<Reply> {
    issue_token(db, s, user_id, username)
}

pub fn logout(db: &mut dyn Db, token_hash: String) -> OpResult<Reply> {
    db.execute("DELETE FROM tokens WHERE token_hash = ?", &[token_hash.clone().into()])?;
    Ok((obj([]).into(), Effect::Logout { token_hash }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_hashing() {
        assert!(validate_username("ann_1.b-c").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("has space").is_err());
        assert!(validate_username(&"x".repeat(33)).is_err());
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert_eq!(username_key("AnN"), "ann");
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert_eq!(hash_token("t").len(), 64);
        assert_ne!(new_token(), new_token());
    }
}
