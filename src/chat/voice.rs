//! Voice channel participants (SPEC §7), loop side. Nothing here is stored: a restart
//! empties every room, as a restart drops every call.

use std::collections::HashMap;

use serde_json::json;

use crate::protocol::encode_push;

#[derive(Debug, Default)]
pub struct Rooms {
    /// channel -> (server, participants as (user, connection key)).
    rooms: HashMap<i64, (i64, Vec<(i64, usize)>)>,
}

/// A room whose participants changed: push its `VOICE_STATE` to the server.
pub struct Changed {
    pub server_id: i64,
    pub frame: Vec<u8>,
}

impl Rooms {
    fn changed(&mut self, channel_id: i64) -> Option<Changed> {
        let (server_id, people) = self.rooms.get(&channel_id)?;
        let mut users: Vec<i64> = people.iter().map(|(u, _)| *u).collect();
        users.sort_unstable();
        users.dedup();
        let ids: Vec<String> = users.iter().map(i64::to_string).collect();
        let frame = encode_push(
            "VOICE_STATE",
            &json!({"channel_id": channel_id.to_string(), "user_ids": ids}),
        );
        let server_id = *server_id;
        if people.is_empty() {
            self.rooms.remove(&channel_id);
        }
        Some(Changed { server_id, frame })
    }

    pub fn join(&mut self, server_id: i64, channel_id: i64, user_id: i64, key: usize) -> Option<Changed> {
        let (_, people) = self.rooms.entry(channel_id).or_insert((server_id, Vec::new()));
        if !people.contains(&(user_id, key)) {
            people.push((user_id, key));
        }
        self.changed(channel_id)
    }

    /// Connections in the server's voice rooms: all of them, or one user's.
    pub fn connections_in(&self, server_id: i64, user_id: Option<i64>) -> Vec<usize> {
        self.rooms
            .values()
            .filter(|(s, _)| *s == server_id)
            .flat_map(|(_, people)| people.iter())
            .filter(|(u, _)| user_id.is_none_or(|want| *u == want))
            .map(|(_, k)| *k)
            .collect()
    }

    pub fn leave(&mut self, channel_id: i64, key: usize) -> Option<Changed> {
        let (_, people) = self.rooms.get_mut(&channel_id)?;
        people.retain(|(_, k)| *k != key);
        self.changed(channel_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave_report_participants() {
        let mut r = Rooms::default();
        let c = r.join(1, 10, 7, 0).unwrap();
        assert_eq!(c.server_id, 1);
        assert!(String::from_utf8(c.frame).unwrap().contains(r#""user_ids":["7"]"#));
        r.join(1, 10, 8, 1);
        let c = r.leave(10, 0).unwrap();
        assert!(String::from_utf8(c.frame).unwrap().contains(r#""user_ids":["8"]"#));
        r.join(1, 11, 9, 2);
        assert_eq!(r.connections_in(1, Some(9)), vec![2]);
        assert_eq!(r.connections_in(1, None).len(), 2);
        r.leave(10, 1);
        r.leave(11, 2);
        assert!(r.rooms.is_empty());
    }
}
