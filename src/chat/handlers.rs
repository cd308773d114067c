//! Request handlers, on the loop: validate arguments and either answer at once or name
//! the storage op that will. Handlers never touch a socket or block; the loop applies
//! what they return.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::accounts::{validate_password, validate_username, Session};
use super::ops::{obj, parse_id, Op};
use super::roles::Role;
use crate::config::Config;
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
    /// Stop this connection's subscription to a server (loop state only).
    Unsubscribe(i64),
}

/// Deserialises an action's `data` into its argument struct.
pub fn args<T: DeserializeOwned>(data: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(data)).map_err(|e| ApiError::bad_request(format!("invalid data: {e}")))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

/// Handles an action whose preconditions (session) the caller has checked.
pub fn handle(action: Action, data: Map<String, Value>, session: Option<&Session>, cfg: &Config) -> Outcome {
    match run(action, data, session, cfg) {
        Ok(o) => o,
        Err(e) => Outcome::Fail(e),
    }
}

/// A wire id; one that cannot be ours matches nothing.
fn id(s: &str, what: &str) -> Result<i64, ApiError> {
    parse_id(s).ok_or_else(|| ApiError::not_found(format!("no such {what}")))
}

fn page(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(0) => Err(ApiError::bad_request("limit must be positive")),
        Some(n) => Ok(n.min(max)),
    }
}

fn text(v: &str, what: &str, max_chars: usize) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n == 0 || n > max_chars || v.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {max_chars} characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ServerArg {
    server_id: String,
}
#[derive(Deserialize)]
struct ChannelArg {
    channel_id: String,
}
#[derive(Deserialize)]
struct MemberArg {
    server_id: String,
    user_id: String,
}

fn run(action: Action, data: Map<String, Value>, session: Option<&Session>, cfg: &Config) -> Result<Outcome, ApiError> {
    // Actions usable without a session.
    match action {
        Action::Ping => return Ok(Outcome::Reply(obj([("time", Value::String(rfc3339_ms(now_ms())))]))),
        Action::Register => {
            let c: Credentials = args(data)?;
            validate_username(&c.username)?;
            validate_password(&c.password)?;
            return Ok(Outcome::Job(Op::Register {
                username: c.username,
                password: c.password,
            }));
        }
        Action::Login => {
            let c: Credentials = args(data)?;
            // Same answer as a wrong password: nothing is revealed about which is wrong.
            if validate_username(&c.username).is_err() || c.password.len() > 1024 {
                return Err(ApiError::unauthenticated("wrong username or password"));
            }
            return Ok(Outcome::Job(Op::Login {
                username: c.username,
                password: c.password,
            }));
        }
        Action::Auth => {
            let t: Token = args(data)?;
            if t.token.len() != 64 {
                return Err(ApiError::unauthenticated("invalid or expired token"));
            }
            return Ok(Outcome::Job(Op::Auth { token: t.token }));
        }
        _ => {}
    }
    let Some(session) = session else {
        return Err(ApiError::unauthenticated(
            "this action needs a session: REGISTER, LOGIN or AUTH first",
        ));
    };
    let user = session.user_id;
    let op = match action {
        Action::Logout => Op::Logout {
            token_hash: session.token_hash.clone(),
        },
        Action::CreateServer => {
            #[derive(Deserialize)]
            struct A {
                name: String,
                description: Option<String>,
                is_public: Option<bool>,
            }
            let a: A = args(data)?;
            text(&a.name, "name", 100)?;
            let description = a.description.unwrap_or_default();
            if description.chars().count() > 1000 {
                return Err(ApiError::bad_request("description must be at most 1000 characters"));
            }
            Op::CreateServer {
                user,
                name: a.name,
                description,
                is_public: a.is_public.unwrap_or(false),
            }
        }
        Action::ListServers => Op::ListServers { user },
        Action::DiscoverServers => {
            #[derive(Deserialize)]
            struct A {
                query: Option<String>,
                after: Option<String>,
                limit: Option<usize>,
            }
            let a: A = args(data)?;
            let after = a.after.as_deref().map_or(0, |s| parse_id(s).unwrap_or(i64::MAX));
            Op::DiscoverServers {
                query: a.query.unwrap_or_default(),
                after,
                limit: page(a.limit, 50, 100)?,
            }
        }
        Action::JoinServer => {
            #[derive(Deserialize)]
            struct A {
                server_id: Option<String>,
                invite_code: Option<String>,
            }
            let a: A = args(data)?;
            let server_id = a.server_id.as_deref().map(|s| id(s, "server")).transpose()?;
            if server_id.is_none() && a.invite_code.is_none() {
                return Err(ApiError::bad_request("server_id or invite_code is required"));
            }
            Op::JoinServer {
                user,
                server_id,
                invite_code: a.invite_code,
            }
        }
        Action::CreateInvite => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                max_uses: Option<i64>,
                expires_in_s: Option<i64>,
            }
            let a: A = args(data)?;
            if a.max_uses.is_some_and(|m| m < 1) || a.expires_in_s.is_some_and(|e| e < 1) {
                return Err(ApiError::bad_request("max_uses and expires_in_s must be positive"));
            }
            Op::CreateInvite {
                user,
                server_id: id(&a.server_id, "server")?,
                max_uses: a.max_uses,
                expires_in_s: a.expires_in_s,
            }
        }
        Action::LeaveServer => Op::LeaveServer {
            user,
            server_id: id(&args::<ServerArg>(data)?.server_id, "server")?,
        },
        Action::DeleteServer => Op::DeleteServer {
            user,
            server_id: id(&args::<ServerArg>(data)?.server_id, "server")?,
        },
        Action::ListChannels => Op::ListChannels {
            user,
            server_id: id(&args::<ServerArg>(data)?.server_id, "server")?,
        },
        Action::ListMembers => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                after: Option<String>,
                limit: Option<usize>,
            }
            let a: A = args(data)?;
            let after = a.after.as_deref().map_or(0, |s| parse_id(s).unwrap_or(i64::MAX));
            Op::ListMembers {
                user,
                server_id: id(&a.server_id, "server")?,
                after,
                limit: page(a.limit, 1000, 1000)?,
            }
        }
        Action::SetRole => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                user_id: String,
                role: String,
            }
            let a: A = args(data)?;
            let role = Role::parse(&a.role)
                .ok_or_else(|| ApiError::bad_request("role must be owner, admin, moderator or member"))?;
            Op::SetRole {
                user,
                server_id: id(&a.server_id, "server")?,
                target: id(&a.user_id, "member")?,
                role,
            }
        }
        Action::Kick => {
            let a: MemberArg = args(data)?;
            Op::Kick {
                user,
                server_id: id(&a.server_id, "server")?,
                target: id(&a.user_id, "member")?,
            }
        }
        Action::CreateChannel => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                name: String,
                #[serde(rename = "type")]
                kind: Option<String>,
            }
            let a: A = args(data)?;
            text(&a.name, "name", 100)?;
            let kind = a.kind.unwrap_or_else(|| "text".into());
            if kind != "text" && kind != "voice" {
                return Err(ApiError::bad_request("type must be text or voice"));
            }
            Op::CreateChannel {
                user,
                server_id: id(&a.server_id, "server")?,
                name: a.name,
                kind,
            }
        }
        Action::DeleteChannel => Op::DeleteChannel {
            user,
            channel_id: id(&args::<ChannelArg>(data)?.channel_id, "channel")?,
        },
        Action::OpenDm => {
            #[derive(Deserialize)]
            struct A {
                user_ids: Vec<String>,
            }
            let a: A = args(data)?;
            if a.user_ids.is_empty() || a.user_ids.len() > 10 {
                return Err(ApiError::bad_request("user_ids must name 1 to 10 users"));
            }
            let others = a
                .user_ids
                .iter()
                .map(|u| id(u, "user"))
                .collect::<Result<Vec<_>, _>>()?;
            Op::OpenDm { user, others }
        }
        Action::PostMessage => {
            #[derive(Deserialize)]
            struct A {
                channel_id: String,
                content: Option<String>,
                attachments: Option<Vec<String>>,
                client_msg_id: Option<String>,
            }
            let a: A = args(data)?;
            let attachments = a.attachments.unwrap_or_default();
            if attachments.len() > 10 {
                return Err(ApiError::bad_request("at most 10 attachments"));
            }
            let content = a.content.unwrap_or_default();
            if attachments.is_empty() || !content.is_empty() {
                content_ok(&content)?;
            }
            if a.client_msg_id.as_ref().is_some_and(|k| k.is_empty() || k.len() > 64) {
                return Err(ApiError::bad_request("client_msg_id must be 1 to 64 bytes"));
            }
            let attachments = attachments
                .iter()
                .map(|f| id(f, "file"))
                .collect::<Result<Vec<_>, _>>()?;
            Op::PostMessage {
                user,
                channel_id: id(&a.channel_id, "channel")?,
                content,
                attachments,
                client_msg_id: a.client_msg_id,
            }
        }
        Action::EditMessage => {
            #[derive(Deserialize)]
            struct A {
                message_id: String,
                content: String,
            }
            let a: A = args(data)?;
            content_ok(&a.content)?;
            Op::EditMessage {
                user,
                message_id: id(&a.message_id, "message")?,
                content: a.content,
            }
        }
        Action::DeleteMessage => {
            #[derive(Deserialize)]
            struct A {
                message_id: String,
            }
            let a: A = args(data)?;
            Op::DeleteMessage {
                user,
                message_id: id(&a.message_id, "message")?,
            }
        }
        Action::GetMessages => {
            #[derive(Deserialize)]
            struct A {
                channel_id: String,
                before_message_id: Option<String>,
                limit: Option<usize>,
            }
            let a: A = args(data)?;
            let before = a.before_message_id.as_deref().map(|s| parse_id(s).unwrap_or(0));
            Op::GetMessages {
                user,
                channel_id: id(&a.channel_id, "channel")?,
                before,
                limit: page(a.limit, 50, 100)?,
            }
        }
        Action::Subscribe => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                client_delta_id: Option<i64>,
            }
            let a: A = args(data)?;
            if a.client_delta_id.is_some_and(|c| c < 0) {
                return Err(ApiError::bad_request("client_delta_id must not be negative"));
            }
            Op::Subscribe {
                user,
                server_id: id(&a.server_id, "server")?,
                after: a.client_delta_id,
                page: cfg.catchup_page,
            }
        }
        Action::Unsubscribe => return Ok(Outcome::Unsubscribe(id(&args::<ServerArg>(data)?.server_id, "server")?)),
        Action::Sync => {
            #[derive(Deserialize)]
            struct A {
                server_id: String,
                client_delta_id: Option<i64>,
                limit: Option<usize>,
            }
            let a: A = args(data)?;
            if a.client_delta_id.is_some_and(|c| c < 0) {
                return Err(ApiError::bad_request("client_delta_id must not be negative"));
            }
            let after = a.client_delta_id.unwrap_or(0);
            Op::Sync {
                user,
                server_id: id(&a.server_id, "server")?,
                after,
                limit: page(a.limit, 1000, 1000)?,
            }
        }
        Action::RestoreHistory => {
            #[derive(Deserialize)]
            struct A {
                channel_id: String,
                before_delta_id: Option<i64>,
                limit: Option<usize>,
            }
            let a: A = args(data)?;
            Op::Restore {
                user,
                channel_id: id(&a.channel_id, "channel")?,
                before: a.before_delta_id,
                limit: page(a.limit, 100, 1000)?,
            }
        }
        Action::Typing => Op::Typing {
            user,
            channel_id: id(&args::<ChannelArg>(data)?.channel_id, "channel")?,
        },
        Action::JoinVoice | Action::LeaveVoice => Op::Voice {
            user,
            channel_id: id(&args::<ChannelArg>(data)?.channel_id, "channel")?,
            join: action == Action::JoinVoice,
        },
        Action::CallSignal => {
            #[derive(Deserialize)]
            struct A {
                to_user_id: String,
                call_id: String,
                payload: Value,
            }
            let a: A = args(data)?;
            if a.call_id.is_empty() || a.call_id.len() > 128 {
                return Err(ApiError::bad_request("call_id must be 1 to 128 bytes"));
            }
            Op::CallSignal {
                user,
                to_user: id(&a.to_user_id, "user")?,
                call_id: a.call_id,
                payload: a.payload,
            }
        }
        Action::TurnCredentials => return Ok(Outcome::Reply(super::turn::credentials(cfg, user)?)),
        Action::Ping | Action::Register | Action::Login | Action::Auth => {
            return Err(ApiError::internal("open actions are handled above"))
        }
    };
    Ok(Outcome::Job(op))
}

fn content_ok(content: &str) -> Result<(), ApiError> {
    let n = content.chars().count();
    if n == 0 || n > 4000 {
        return Err(ApiError::bad_request("content must be 1 to 4000 characters"));
    }
    Ok(())
}
