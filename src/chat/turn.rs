//! TURN_CREDENTIALS: time-limited TURN credentials in the TURN REST API style that coturn
//! accepts with `use-auth-secret`: username `EXPIRY:USER_ID`, password
//! `base64(HMAC-SHA1(secret, username))`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha1::Sha1;

use super::ops::obj;
use crate::config::Config;
use crate::protocol::ApiError;
use crate::time::now_ms;

pub fn credentials(cfg: &Config, user_id: i64) -> Result<Map<String, Value>, ApiError> {
    let Some(secret) = cfg.turn_secret.as_deref() else {
        return Err(ApiError::not_found("TURN is not configured on this server"));
    };
    let expires = now_ms() / 1000 + cfg.turn_ttl_s as i64;
    let username = format!("{expires}:{user_id}");
    Ok(obj([
        ("username", username.clone().into()),
        ("password", sign(secret, &username).into()),
        ("ttl", cfg.turn_ttl_s.into()),
        ("uris", cfg.turn_uris.clone().into()),
    ]))
}

fn sign(secret: &str, username: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return String::new(); // HMAC takes keys of any length; unreachable
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc2202_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn needs_a_secret() {
        let mut cfg = Config::default();
        assert!(credentials(&cfg, 1).is_err());
        cfg.turn_secret = Some("s".into());
        let c = credentials(&cfg, 42).unwrap();
        assert!(c["username"].as_str().unwrap().ends_with(":42"));
    }
}
