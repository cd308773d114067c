//! Request handlers, on the loop: validate arguments and either answer at once or name
//! the storage op that will. Handlers never touch a socket or block; the loop applies
//! what they return.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::accounts::{validate_password, validate_username, Session};
use super::ops::{obj, Op};
use crate::protocol::{Action, ApiError};
use crate::time::{now_ms, rfc3339_ms};

/// What the loop does with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Answer now with this data.
    Reply(Map<String, Value>),
    /// Answer now with this error.
    Fail(ApiError),
    /// Queue this op; a worker answers.
    Job(Op),
}

/// Deserialises an action's `data` into its argument struct.
pub fn args<T: DeserializeOwned>(data: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(data)).map_err(|e| ApiError::bad_request(format!("invalid data: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    token: String,
}

/// Handles an action whose preconditions (session) the caller has checked.
pub fn handle(action: Action, data: Map<String, Value>, session: Option<&Session>) -> Outcome {
    match run(action, data, session) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

fn run(action: Action, data: Map<String, Value>, session: Option<&Session>) -> Result<Outcome, ApiError> {
    Ok(match action {
        Action::Ping => Outcome::Reply(obj([("time", Value::String(rfc3339_ms(now_ms())))])),
        Action::Register => {
            let c: Credentials = args(data)?;
            validate_username(&c.username)?;
            validate_password(&c.password)?;
            Outcome::Job(Op::Register {
                username: c.username,
                password: c.password,
            })
        }
        Action::Login => {
            let c: Credentials = args(data)?;
            // Same answer as a wrong password: nothing is revealed about which is wrong.
            if validate_username(&c.username).is_err() || c.password.len() > 1024 {
                return Err(ApiError::unauthenticated("wrong username or password"));
            }
            Outcome::Job(Op::Login {
                username: c.username,
                password: c.password,
            })
        }
        Action::Auth => {
            let t: Token = args(data)?;
            if t.token.len() != 64 {
                return Err(ApiError::unauthenticated("invalid or expired token"));
            }
            Outcome::Job(Op::Auth { token: t.token })
        }
        Action::Logout => match session {
            Some(s) => Outcome::Job(Op::Logout {
                token_hash: s.token_hash.clone(),
            }),
            None => return Err(ApiError::unauthenticated("no session")),
        },
        _ => {
            return Err(ApiError::new(
                crate::protocol::ErrorCode::UnknownAction,
                format!("{} is not implemented yet", action.name()),
            ))
        }
    })
}
