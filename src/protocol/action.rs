//! The action table: every action of SPEC §4-7 with what must hold before its handler runs.
//!
//! Checked once, in one place, before dispatch (after ergo's command table), so a handler
//! never has to remember to check for a session.

/// Every action a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Ping,
    Register,
    Login,
    Auth,
    Logout,
    CreateServer,
    ListServers,
    DiscoverServers,
    JoinServer,
    CreateInvite,
    LeaveServer,
    ListMembers,
    SetRole,
    Kick,
    DeleteServer,
    CreateChannel,
    ListChannels,
    DeleteChannel,
    OpenDm,
    PostMessage,
    EditMessage,
    DeleteMessage,
    GetMessages,
    Subscribe,
    Unsubscribe,
    Sync,
    RestoreHistory,
    Typing,
    JoinVoice,
    LeaveVoice,
    CallSignal,
    TurnCredentials,
}

use Action::*;

/// (wire name, action, usable without a session)
const TABLE: &[(&str, Action, bool)] = &[
    ("PING", Ping, true),
    ("REGISTER", Register, true),
    ("LOGIN", Login, true),
    ("AUTH", Auth, true),
    ("LOGOUT", Logout, false),
    ("CREATE_SERVER", CreateServer, false),
    ("LIST_SERVERS", ListServers, false),
    ("DISCOVER_SERVERS", DiscoverServers, false),
    ("JOIN_SERVER", JoinServer, false),
    ("CREATE_INVITE", CreateInvite, false),
    ("LEAVE_SERVER", LeaveServer, false),
    ("LIST_MEMBERS", ListMembers, false),
    ("SET_ROLE", SetRole, false),
    ("KICK", Kick, false),
    ("DELETE_SERVER", DeleteServer, false),
    ("CREATE_CHANNEL", CreateChannel, false),
    ("LIST_CHANNELS", ListChannels, false),
    ("DELETE_CHANNEL", DeleteChannel, false),
    ("OPEN_DM", OpenDm, false),
    ("POST_MESSAGE", PostMessage, false),
    ("EDIT_MESSAGE", EditMessage, false),
    ("DELETE_MESSAGE", DeleteMessage, false),
    ("GET_MESSAGES", GetMessages, false),
    ("SUBSCRIBE", Subscribe, false),
    ("UNSUBSCRIBE", Unsubscribe, false),
    ("SYNC", Sync, false),
    ("RESTORE_HISTORY", RestoreHistory, false),
    ("TYPING", Typing, false),
    ("JOIN_VOICE", JoinVoice, false),
    ("LEAVE_VOICE", LeaveVoice, false),
    ("CALL_SIGNAL", CallSignal, false),
    ("TURN_CREDENTIALS", TurnCredentials, false),
];

impl Action {
    /// Looks up an (upper-cased) wire name; `POST` and `RESTORE` are Chime's aliases.
    pub fn from_name(name: &str) -> Option<Action> {
        match name {
            "POST" => return Some(PostMessage),
            "RESTORE" => return Some(RestoreHistory),
            _ => {}
        }
        TABLE.iter().find(|(n, _, _)| *n == name).map(|(_, a, _)| *a)
    }

    /// The canonical wire name, used to build `<NAME>_RESPONSE`.
    pub fn name(self) -> &'static str {
        TABLE.iter().find(|(_, a, _)| *a == self).map_or("ERROR", |(n, _, _)| n)
    }

    /// Whether the action may run on a connection without a session.
    pub fn open(self) -> bool {
        TABLE.iter().any(|(_, a, open)| *a == self && *open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, action, _) in TABLE {
            assert_eq!(Action::from_name(name), Some(*action));
            assert_eq!(action.name(), *name);
        }
        assert_eq!(Action::from_name("POST"), Some(PostMessage));
        assert_eq!(Action::from_name("RESTORE"), Some(RestoreHistory));
        assert_eq!(Action::from_name("NOPE"), None);
    }

    #[test]
    fn only_session_actions_are_closed() {
        assert!(Ping.open() && Register.open() && Login.open() && Auth.open());
        assert!(!Logout.open() && !PostMessage.open() && !Subscribe.open());
    }
}
