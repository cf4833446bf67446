//! Job, execution and node states with Bacalhau's encodings (reference §3.7 and §4):
//! job states are strings on the wire, execution compute and desired states are integers.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

macro_rules! int_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub enum $name { #[default] $($(#[$vm])* $v = $n),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$v => stringify!($v)),+ } }
            pub fn from_u8(n: u8) -> Option<Self> { match n { $($n => Some($name::$v),)+ _ => None } }
            pub fn parse(s: &str) -> Option<Self> {
                let s = s.trim();
                if let Ok(n) = s.parse::<u8>() { return Self::from_u8(n); }
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

int_enum!(
    /// `JobStateType`: serialised as a string in JSON (`"Completed"`).
    JobStateType { Undefined = 0, Pending = 1, Queued = 2, Running = 3, Completed = 4, Failed = 5, Stopped = 6 }
);
int_enum!(
    /// `ExecutionStateType`: serialised as an integer in JSON.
    ExecutionStateType {
        Undefined = 0, New = 1, AskForBid = 2, AskForBidAccepted = 3, AskForBidRejected = 4, BidAccepted = 5,
        Running = 6, Publishing = 7, BidRejected = 8, Completed = 9, Failed = 10, Cancelled = 11,
    }
);
int_enum!(
    /// `ExecutionDesiredStateType`: serialised as an integer in JSON.
    ExecutionDesiredState { Pending = 0, Running = 1, Stopped = 2 }
);

impl JobStateType {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }
}

impl ExecutionStateType {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::BidRejected
                | Self::Completed
                | Self::Failed
                | Self::Cancelled
                | Self::AskForBidRejected
        )
    }
    /// BidAccepted, Running or Publishing: holding resources on a node.
    pub fn is_executing(self) -> bool {
        matches!(self, Self::BidAccepted | Self::Running | Self::Publishing)
    }
    /// Whether a compute node may move an execution from `self` to `next`. Terminal states are final;
    /// anything else may fail or be cancelled; progress only goes forward.
    pub fn can_transition_to(self, next: Self) -> bool {
        use ExecutionStateType::*;
        if self.is_terminal() {
            return false;
        }
        if self == next {
            return true;
        }
        match next {
            Failed | Cancelled => true,
            AskForBid => self == New,
            AskForBidAccepted | AskForBidRejected => matches!(self, New | AskForBid),
            BidAccepted => matches!(self, New | AskForBid | AskForBidAccepted),
            BidRejected => matches!(self, New | AskForBid | AskForBidAccepted),
            Running => matches!(self, New | AskForBidAccepted | BidAccepted),
            Publishing => matches!(self, Running),
            Completed => matches!(self, Running | Publishing | BidAccepted),
            New | Undefined => false,
        }
    }
}

impl Serialize for JobStateType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            s.serialize_u8(*self as u8)
        }
    }
}

fn de_enum<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Option<T>,
    from: fn(u8) -> Option<T>,
    what: &str,
) -> Result<T, D::Error> {
    if d.is_human_readable() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            N(u8),
            S(String),
        }
        match R::deserialize(d)? {
            R::N(n) => from(n).ok_or_else(|| D::Error::custom(format!("unknown {what} {n}"))),
            R::S(s) => parse(&s).ok_or_else(|| D::Error::custom(format!("unknown {what} {s:?}"))),
        }
    } else {
        let n = u8::deserialize(d)?;
        from(n).ok_or_else(|| D::Error::custom(format!("unknown {what} {n}")))
    }
}

impl<'de> Deserialize<'de> for JobStateType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_enum(d, Self::parse, Self::from_u8, "job state")
    }
}

macro_rules! int_serde {
    ($t:ident, $what:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u8(*self as u8)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_enum(d, Self::parse, Self::from_u8, $what)
            }
        }
    };
}
int_serde!(ExecutionStateType, "execution state");
int_serde!(ExecutionDesiredState, "desired state");

/// `State[T]`: `{StateType, Message, Details}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct State<T> {
    pub state_type: T,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: std::collections::BTreeMap<String, String>,
}

impl<T> State<T> {
    pub fn new(state_type: T) -> Self {
        State {
            state_type,
            message: String::new(),
            details: Default::default(),
        }
    }
    pub fn with_message(state_type: T, message: impl Into<String>) -> Self {
        State {
            state_type,
            message: message.into(),
            details: Default::default(),
        }
    }
}

/// Node membership (approval), serialised as Bacalhau's upper-case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NodeMembership {
    #[serde(rename = "PENDING", alias = "pending", alias = "Pending")]
    Pending,
    #[default]
    #[serde(rename = "APPROVED", alias = "approved", alias = "Approved")]
    Approved,
    #[serde(rename = "REJECTED", alias = "rejected", alias = "Rejected")]
    Rejected,
}

/// Node connection status, serialised as Bacalhau's upper-case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NodeConnection {
    #[serde(rename = "CONNECTED", alias = "connected", alias = "Connected")]
    Connected,
    #[default]
    #[serde(
        rename = "DISCONNECTED",
        alias = "disconnected",
        alias = "Disconnected"
    )]
    Disconnected,
}

impl NodeMembership {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
        }
    }
}
impl NodeConnection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "CONNECTED",
            Self::Disconnected => "DISCONNECTED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_strings_and_execution_states_integers_in_json() {
        assert_eq!(
            serde_json::to_string(&JobStateType::Completed).unwrap(),
            "\"Completed\""
        );
        assert_eq!(
            serde_json::to_string(&ExecutionStateType::Completed).unwrap(),
            "9"
        );
        assert_eq!(
            serde_json::to_string(&ExecutionDesiredState::Stopped).unwrap(),
            "2"
        );
        assert_eq!(
            serde_json::from_str::<JobStateType>("\"completed\"").unwrap(),
            JobStateType::Completed
        );
        assert_eq!(
            serde_json::from_str::<ExecutionStateType>("6").unwrap(),
            ExecutionStateType::Running
        );
        assert_eq!(
            serde_json::to_string(&NodeMembership::Approved).unwrap(),
            "\"APPROVED\""
        );
    }

    #[test]
    fn terminal_execution_states_never_move() {
        for s in ExecutionStateType::ALL.iter().filter(|s| s.is_terminal()) {
            for n in ExecutionStateType::ALL {
                assert!(!s.can_transition_to(*n), "{s} -> {n}");
            }
        }
        assert!(ExecutionStateType::Running.can_transition_to(ExecutionStateType::Publishing));
        assert!(!ExecutionStateType::Publishing.can_transition_to(ExecutionStateType::Running));
    }
}
