//! Roles and the membership checks every server action starts with.

use crate::chat::ops::OpResult;
use crate::protocol::ApiError;
use crate::store::{Db, RowExt};

/// owner > admin > moderator > member (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Moderator,
    Admin,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "member" => Role::Member,
            "moderator" => Role::Moderator,
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// What a membership check learns about the server.
#[derive(Debug, Clone)]
pub struct Membership {
    pub server_id: i64,
    pub role: Role,
    pub is_dm: bool,
}

impl Membership {
    /// Refuses unless the member's role is at least `min`.
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("needs role {} or above", min.as_str())))
        }
    }

    /// Refuses in a DM (nobody joins, is invited into or administers a DM).
    pub fn not_dm(&self) -> Result<(), ApiError> {
        if self.is_dm {
            Err(ApiError::forbidden("not allowed in a direct message"))
        } else {
            Ok(())
        }
    }
}

/// The caller's membership of a live server: `not_found` if there is no such server,
/// `forbidden` if the caller is not a member.
pub fn member(db: &mut dyn Db, server_id: i64, user_id: i64) -> OpResult<Membership> {
    let row = db.query_row(
        "SELECT s.kind, m.role FROM servers s LEFT JOIN server_users m ON m.server_id = s.server_id AND m.user_id = ? \
         WHERE s.server_id = ? AND s.deleted = 0",
        &[user_id.into(), server_id.into()],
    )?;
    let Some(r) = row else {
        return Err(ApiError::not_found("no such server").into());
    };
    let Some(role) = r.opt_text(1)? else {
        return Err(ApiError::forbidden("not a member of this server").into());
    };
    let role = Role::parse(&role).unwrap_or(Role::Member);
    Ok(Membership {
        server_id,
        role,
        is_dm: r.text(0)? == "dm",
    })
}

/// A live channel: `(server_id, type)`, `not_found` if missing or deleted.
pub fn channel(db: &mut dyn Db, channel_id: i64) -> OpResult<(i64, String)> {
    let row = db.query_row(
        "SELECT server_id, type FROM channels WHERE channel_id = ? AND deleted = 0",
        &[channel_id.into()],
    )?;
    match row {
        Some(r) => Ok((r.int(0)?, r.text(1)?)),
        None => Err(ApiError::not_found("no such channel").into()),
    }
}

/// The caller's membership of the server that holds a channel.
pub fn channel_member(db: &mut dyn Db, channel_id: i64, user_id: i64) -> OpResult<(Membership, String)> {
    let (server_id, kind) = channel(db, channel_id)?;
    Ok((member(db, server_id, user_id)?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Moderator && Role::Moderator > Role::Member);
        for r in [Role::Member, Role::Moderator, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("king"), None);
    }
}
