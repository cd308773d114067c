//! Communities ("servers"), their members, roles, invites and channels, and DMs.
//! Worker side: each write runs inside the writer's transaction and appends its deltas.

use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};

use super::delta::Delta;
use super::log::{self, NewDelta};
use super::ops::{obj, sid, OpResult, Settings, WriterState};
use super::roles::{self, Role};
use crate::protocol::ApiError;
use crate::store::{Db, RowExt, Val};
use crate::time::now_ms;

/// Everything a write needs: the connection, settings, id state and the deltas it makes.
pub struct Tx<'a> {
    pub db: &'a mut dyn Db,
    pub s: &'a Settings,
    pub w: &'a mut WriterState,
    pub deltas: &'a mut Vec<Delta>,
}

impl Tx<'_> {
    pub fn append(&mut self, d: NewDelta) -> OpResult<i64> {
        log::append(self.db, self.s, self.w, self.deltas, d)
    }
    pub fn id(&mut self) -> OpResult<i64> {
        self.w.next_id(self.db)
    }
}

fn add_member(tx: &mut Tx, server_id: i64, user_id: i64, role: Role) -> OpResult<i64> {
    tx.db.execute(
        "INSERT INTO server_users (server_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
        &[server_id.into(), user_id.into(), role.as_str().into(), now_ms().into()],
    )?;
    let mut d = NewDelta::new(server_id, "member_joined", user_id);
    d.content = Some(role.as_str().to_string());
    tx.append(d)
}

fn add_channel(tx: &mut Tx, server_id: i64, actor: i64, name: &str, kind: &str) -> OpResult<(i64, i64)> {
    let channel_id = tx.id()?;
    tx.db.execute(
        "INSERT INTO channels (channel_id, server_id, name, type, created_at) VALUES (?, ?, ?, ?, ?)",
        &[
            channel_id.into(),
            server_id.into(),
            name.into(),
            kind.into(),
            now_ms().into(),
        ],
    )?;
    let mut d = NewDelta::new(server_id, "channel_created", actor);
    d.channel_id = Some(channel_id);
    d.content = Some(json!({"name": name, "type": kind}).to_string());
    Ok((channel_id, tx.append(d)?))
}

fn insert_server(
    tx: &mut Tx,
    owner: i64,
    name: &str,
    description: &str,
    kind: &str,
    public: bool,
    dm_key: Option<String>,
) -> OpResult<i64> {
    let server_id = tx.id()?;
    tx.db.execute(
        "INSERT INTO servers (server_id, name, description, kind, is_public, owner_id, dm_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            server_id.into(),
            name.into(),
            description.into(),
            kind.into(),
            (public as i64).into(),
            owner.into(),
            dm_key.into(),
            now_ms().into(),
        ],
    )?;
    Ok(server_id)
}

pub fn create_server(
    tx: &mut Tx,
    user: i64,
    name: &str,
    description: &str,
    public: bool,
) -> OpResult<Map<String, Value>> {
    let server_id = insert_server(tx, user, name, description, "community", public, None)?;
    add_member(tx, server_id, user, Role::Owner)?;
    let (channel_id, head) = add_channel(tx, server_id, user, "general", "text")?;
    Ok(obj([
        ("server_id", sid(server_id)),
        ("name", name.into()),
        ("description", description.into()),
        ("is_public", public.into()),
        ("kind", "community".into()),
        ("role", "owner".into()),
        ("channel_id", sid(channel_id)),
        ("server_delta_id", head.into()),
    ]))
}

pub fn list_servers(db: &mut dyn Db, user: i64) -> OpResult<Map<String, Value>> {
    let rows = db.query(
        "SELECT s.server_id, s.name, s.kind, m.role, (SELECT MAX(d.delta_id) FROM deltas d WHERE d.server_id = s.server_id) \
         FROM server_users m JOIN servers s ON s.server_id = m.server_id WHERE m.user_id = ? AND s.deleted = 0 ORDER BY s.server_id",
        &[user.into()],
    )?;
    let servers = rows
        .iter()
        .map(|r| {
            Ok(
                json!({"server_id": r.text(0)?, "name": r.text(1)?, "kind": r.text(2)?, "role": r.text(3)?,
                      "server_delta_id": r.opt_int(4)?.unwrap_or(0)}),
            )
        })
        .collect::<OpResult<Vec<_>>>()?;
    Ok(obj([("servers", Value::Array(servers))]))
}

pub fn discover(db: &mut dyn Db, query: &str, after: i64, limit: usize) -> OpResult<Map<String, Value>> {
    let pattern = format!(
        "%{}%",
        query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
    );
    let rows = db.query(
        "SELECT s.server_id, s.name, s.description, (SELECT COUNT(*) FROM server_users m WHERE m.server_id = s.server_id) \
         FROM servers s WHERE s.is_public = 1 AND s.deleted = 0 AND s.kind = 'community' AND s.server_id > ? \
         AND LOWER(s.name) LIKE LOWER(?) ESCAPE '\\' ORDER BY s.server_id LIMIT ?",
        &[after.into(), pattern.into(), (limit as i64 + 1).into()],
    )?;
    let more = rows.len() > limit;
    let servers = rows
        .iter()
        .take(limit)
        .map(|r| Ok(json!({"server_id": r.text(0)?, "name": r.text(1)?, "description": r.text(2)?, "member_count": r.int(3)?})))
        .collect::<OpResult<Vec<_>>>()?;
    Ok(obj([("servers", Value::Array(servers)), ("has_more", more.into())]))
}

/// JOIN_SERVER by id (public servers) or by invite code. Joining twice is a no-op.
pub fn join(tx: &mut Tx, user: i64, server_id: Option<i64>, invite: Option<&str>) -> OpResult<Map<String, Value>> {
    let server_id = match (server_id, invite) {
        (_, Some(code)) => {
            let row = tx.db.query_row(
                "SELECT server_id, max_uses, uses, expires_at FROM invites WHERE code = ?",
                &[code.into()],
            )?;
            let Some(r) = row else {
                return Err(ApiError::not_found("no such invite").into());
            };
            let (server_id, max_uses, uses, expires) = (r.int(0)?, r.opt_int(1)?, r.int(2)?, r.opt_int(3)?);
            if expires.is_some_and(|t| t <= now_ms()) || max_uses.is_some_and(|m| uses >= m) {
                return Err(ApiError::not_found("invite expired or used up").into());
            }
            if is_member(tx.db, server_id, user)? {
                return joined_reply(tx.db, server_id);
            }
            tx.db
                .execute("UPDATE invites SET uses = uses + 1 WHERE code = ?", &[code.into()])?;
            server_id
        }
        (Some(server_id), None) => {
            let row = tx.db.query_row(
                "SELECT is_public, kind FROM servers WHERE server_id = ? AND deleted = 0",
                &[server_id.into()],
            )?;
            let Some(r) = row else {
                return Err(ApiError::not_found("no such server").into());
            };
            if is_member(tx.db, server_id, user)? {
                return joined_reply(tx.db, server_id);
            }
            if r.text(1)? != "community" {
                return Err(ApiError::forbidden("nobody can join a direct message").into());
            }
            if r.int(0)? != 1 {
                return Err(ApiError::forbidden("this server is not public; an invite is needed").into());
            }
            server_id
        }
        (None, None) => return Err(ApiError::bad_request("server_id or invite_code is required").into()),
    };
    let kind = tx.db.query_row(
        "SELECT kind FROM servers WHERE server_id = ? AND deleted = 0",
        &[server_id.into()],
    )?;
    match kind {
        None => return Err(ApiError::not_found("no such server").into()),
        Some(r) if r.text(0)? == "dm" => return Err(ApiError::forbidden("nobody can join a direct message").into()),
        _ => {}
    }
    add_member(tx, server_id, user, Role::Member)?;
    joined_reply(tx.db, server_id)
}

fn is_member(db: &mut dyn Db, server_id: i64, user: i64) -> OpResult<bool> {
    Ok(db
        .query_row(
            "SELECT 1 FROM server_users WHERE server_id = ? AND user_id = ?",
            &[server_id.into(), user.into()],
        )?
        .is_some())
}

fn joined_reply(db: &mut dyn Db, server_id: i64) -> OpResult<Map<String, Value>> {
    let name = db
        .query_row("SELECT name FROM servers WHERE server_id = ?", &[server_id.into()])?
        .map(|r| r.text(0))
        .transpose()?
        .unwrap_or_default();
    Ok(obj([
        ("server_id", sid(server_id)),
        ("name", name.into()),
        ("server_delta_id", log::head(db, server_id)?.into()),
    ]))
}

pub fn create_invite(
    tx: &mut Tx,
    user: i64,
    server_id: i64,
    max_uses: Option<i64>,
    expires_in_s: Option<i64>,
) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, user)?;
    m.not_dm()?;
    m.require(Role::Moderator)?;
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    let code = hex::encode(bytes);
    let now = now_ms();
    let expires = expires_in_s.map(|s| now + s.saturating_mul(1000));
    tx.db.execute(
        "INSERT INTO invites (code, server_id, created_by, max_uses, uses, expires_at, created_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
        &[code.as_str().into(), server_id.into(), user.into(), max_uses.into(), expires.into(), now.into()],
    )?;
    Ok(obj([("invite_code", code.into()), ("server_id", sid(server_id))]))
}

fn remove_member(tx: &mut Tx, server_id: i64, target: i64, reason: &str) -> OpResult<i64> {
    tx.db.execute(
        "DELETE FROM server_users WHERE server_id = ? AND user_id = ?",
        &[server_id.into(), target.into()],
    )?;
    let mut d = NewDelta::new(server_id, "member_left", target);
    d.content = Some(reason.to_string());
    tx.append(d)
}

pub fn leave(tx: &mut Tx, user: i64, server_id: i64) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, user)?;
    if m.role == Role::Owner {
        return Err(ApiError::conflict("the owner cannot leave; transfer ownership or delete the server").into());
    }
    if m.is_dm {
        let one_to_one = tx
            .db
            .query_row("SELECT dm_key FROM servers WHERE server_id = ?", &[server_id.into()])?;
        if one_to_one.and_then(|r| r.opt_text(0).ok().flatten()).is_some() {
            return Err(ApiError::forbidden("a one-to-one direct message cannot be left").into());
        }
    }
    let head = remove_member(tx, server_id, user, "left")?;
    Ok(obj([("server_id", sid(server_id)), ("server_delta_id", head.into())]))
}

pub fn list_members(
    db: &mut dyn Db,
    user: i64,
    server_id: i64,
    after: i64,
    limit: usize,
) -> OpResult<Map<String, Value>> {
    roles::member(db, server_id, user)?;
    let rows = db.query(
        "SELECT m.user_id, u.username, m.role FROM server_users m JOIN users u ON u.user_id = m.user_id \
         WHERE m.server_id = ? AND m.user_id > ? ORDER BY m.user_id LIMIT ?",
        &[server_id.into(), after.into(), (limit as i64 + 1).into()],
    )?;
    let more = rows.len() > limit;
    let members = rows
        .iter()
        .take(limit)
        .map(|r| Ok(json!({"user_id": r.text(0)?, "username": r.text(1)?, "role": r.text(2)?})))
        .collect::<OpResult<Vec<_>>>()?;
    Ok(obj([("members", Value::Array(members)), ("has_more", more.into())]))
}

/// The target's membership, refused unless the actor outranks it.
fn outranked_target(tx: &mut Tx, actor: &roles::Membership, target: i64) -> OpResult<Role> {
    let row = tx.db.query_row(
        "SELECT role FROM server_users WHERE server_id = ? AND user_id = ?",
        &[actor.server_id.into(), target.into()],
    )?;
    let Some(r) = row else {
        return Err(ApiError::not_found("not a member of this server").into());
    };
    let role = Role::parse(&r.text(0)?).unwrap_or(Role::Member);
    if role >= actor.role {
        return Err(ApiError::forbidden("you may only act on members below your own role").into());
    }
    Ok(role)
}

fn set_role_row(tx: &mut Tx, server_id: i64, user: i64, role: Role) -> OpResult<i64> {
    tx.db.execute(
        "UPDATE server_users SET role = ? WHERE server_id = ? AND user_id = ?",
        &[role.as_str().into(), server_id.into(), user.into()],
    )?;
    let mut d = NewDelta::new(server_id, "role_changed", user);
    d.content = Some(role.as_str().to_string());
    tx.append(d)
}

/// SET_ROLE: an actor may act only on members below its own role and grant only roles
/// below its own; the owner may hand over ownership (and becomes an admin).
pub fn set_role(tx: &mut Tx, actor: i64, server_id: i64, target: i64, role: Role) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, actor)?;
    m.not_dm()?;
    m.require(Role::Moderator)?;
    outranked_target(tx, &m, target)?;
    let head = if role == Role::Owner {
        if m.role != Role::Owner {
            return Err(ApiError::forbidden("only the owner can hand over ownership").into());
        }
        set_role_row(tx, server_id, actor, Role::Admin)?;
        tx.db.execute(
            "UPDATE servers SET owner_id = ? WHERE server_id = ?",
            &[target.into(), server_id.into()],
        )?;
        set_role_row(tx, server_id, target, Role::Owner)?
    } else {
        if role >= m.role {
            return Err(ApiError::forbidden("you may only grant roles below your own").into());
        }
        set_role_row(tx, server_id, target, role)?
    };
    Ok(obj([
        ("server_id", sid(server_id)),
        ("user_id", sid(target)),
        ("role", role.as_str().into()),
        ("server_delta_id", head.into()),
    ]))
}

pub fn kick(tx: &mut Tx, actor: i64, server_id: i64, target: i64) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, actor)?;
    m.not_dm()?;
    m.require(Role::Moderator)?;
    outranked_target(tx, &m, target)?;
    let head = remove_member(tx, server_id, target, "kicked")?;
    Ok(obj([
        ("server_id", sid(server_id)),
        ("user_id", sid(target)),
        ("server_delta_id", head.into()),
    ]))
}

pub fn delete_server(tx: &mut Tx, actor: i64, server_id: i64) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, actor)?;
    m.not_dm()?;
    m.require(Role::Owner)?;
    tx.db.execute(
        "UPDATE servers SET deleted = 1 WHERE server_id = ?",
        &[server_id.into()],
    )?;
    let mut d = NewDelta::new(server_id, "server_updated", actor);
    d.content = Some(json!({"deleted": true}).to_string());
    let head = tx.append(d)?;
    Ok(obj([("server_id", sid(server_id)), ("server_delta_id", head.into())]))
}

pub fn create_channel(tx: &mut Tx, actor: i64, server_id: i64, name: &str, kind: &str) -> OpResult<Map<String, Value>> {
    let m = roles::member(tx.db, server_id, actor)?;
    m.not_dm()?;
    m.require(Role::Admin)?;
    let (channel_id, head) = add_channel(tx, server_id, actor, name, kind)?;
    Ok(obj([
        ("channel_id", sid(channel_id)),
        ("server_id", sid(server_id)),
        ("name", name.into()),
        ("type", kind.into()),
        ("server_delta_id", head.into()),
    ]))
}

pub fn list_channels(db: &mut dyn Db, user: i64, server_id: i64) -> OpResult<Map<String, Value>> {
    roles::member(db, server_id, user)?;
    let rows = db.query(
        "SELECT channel_id, name, type FROM channels WHERE server_id = ? AND deleted = 0 ORDER BY channel_id",
        &[server_id.into()],
    )?;
    let channels = rows
        .iter()
        .map(|r| Ok(json!({"channel_id": r.text(0)?, "name": r.text(1)?, "type": r.text(2)?})))
        .collect::<OpResult<Vec<_>>>()?;
    Ok(obj([
        ("server_id", sid(server_id)),
        ("channels", Value::Array(channels)),
    ]))
}

pub fn delete_channel(tx: &mut Tx, actor: i64, channel_id: i64) -> OpResult<Map<String, Value>> {
    let (m, _) = roles::channel_member(tx.db, channel_id, actor)?;
    m.not_dm()?;
    m.require(Role::Admin)?;
    tx.db.execute(
        "UPDATE channels SET deleted = 1 WHERE channel_id = ?",
        &[channel_id.into()],
    )?;
    let mut d = NewDelta::new(m.server_id, "channel_deleted", actor);
    d.channel_id = Some(channel_id);
    let head = tx.append(d)?;
    Ok(obj([
        ("channel_id", sid(channel_id)),
        ("server_id", sid(m.server_id)),
        ("server_delta_id", head.into()),
    ]))
}

/// OPEN_DM: the same two users always get the same 1:1 DM; a group DM (3 to 11 people)
/// is new each time.
pub fn open_dm(tx: &mut Tx, user: i64, others: &[i64]) -> OpResult<Map<String, Value>> {
    let mut people: Vec<i64> = others.iter().copied().filter(|u| *u != user).collect();
    people.sort_unstable();
    people.dedup();
    if people.is_empty() || people.len() > 10 {
        return Err(ApiError::bad_request("user_ids must name 1 to 10 other users").into());
    }
    let mut names = Vec::with_capacity(people.len() + 1);
    for u in std::iter::once(user).chain(people.iter().copied()) {
        let row = tx
            .db
            .query_row("SELECT username FROM users WHERE user_id = ?", &[u.into()])?;
        match row {
            Some(r) => names.push(r.text(0)?),
            None => return Err(ApiError::not_found(format!("no user {u}")).into()),
        }
    }
    let dm_key = (people.len() == 1).then(|| {
        let (a, b) = (user.min(people[0]), user.max(people[0]));
        format!("{a}:{b}")
    });
    if let Some(key) = &dm_key {
        let row = tx.db.query_row(
            "SELECT s.server_id, c.channel_id FROM servers s JOIN channels c ON c.server_id = s.server_id \
             WHERE s.dm_key = ? ORDER BY c.channel_id LIMIT 1",
            &[Val::from(key.as_str())],
        )?;
        if let Some(r) = row {
            return Ok(obj([
                ("server_id", sid(r.int(0)?)),
                ("channel_id", sid(r.int(1)?)),
                ("created", false.into()),
            ]));
        }
    }
    let server_id = insert_server(tx, user, &names.join(", "), "", "dm", false, dm_key)?;
    for u in std::iter::once(user).chain(people.iter().copied()) {
        add_member(tx, server_id, u, Role::Member)?;
    }
    let (channel_id, _) = add_channel(tx, server_id, user, "dm", "text")?;
    Ok(obj([
        ("server_id", sid(server_id)),
        ("channel_id", sid(channel_id)),
        ("created", true.into()),
    ]))
}
