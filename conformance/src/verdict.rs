//! Verdicts, what a case reports on the way to one, and the profiles of known field variants.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The outcome of one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum Verdict {
    /// Every check held.
    #[serde(rename = "PASS")]
    Pass,
    /// Every check held or differed only in a way a selected profile tolerates.
    #[serde(rename = "NON-STRICT")]
    NonStrict,
    /// A check did not hold: the endpoint does not follow the clause.
    #[serde(rename = "FAIL")]
    Fail,
    /// The case does not apply to this target, or it lacks what the case needs; the reason says.
    #[serde(rename = "SKIP")]
    Skip,
    /// The case could not run (connection lost, set-up refused): nothing is known either way.
    #[serde(rename = "ERROR")]
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::NonStrict => "NON-STRICT",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
        }
    }

    /// Whether a run with this verdict certifies (PASS and NON-STRICT do; SKIP neither counts
    /// for nor against).
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Error)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a case stopped before the end: the error type of every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Fail(String),
    Skip(String),
    Error(String),
}

impl Finding {
    pub fn verdict(&self) -> Verdict {
        match self {
            Finding::Fail(_) => Verdict::Fail,
            Finding::Skip(_) => Verdict::Skip,
            Finding::Error(_) => Verdict::Error,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Finding::Fail(m) | Finding::Skip(m) | Finding::Error(m) => m,
        }
    }
}

/// Fails the case with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($t:tt)*) => { return Err($crate::verdict::Finding::Fail(format!($($t)*))) };
}

/// Fails the case unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        let holds: bool = $cond;
        if !holds {
            $crate::fail!($($t)*);
        }
    };
}

/// Fails the case unless both sides are equal; the message says what was compared.
#[macro_export]
macro_rules! ensure_eq {
    ($got:expr, $want:expr, $($t:tt)*) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            $crate::fail!("{}: got {:?}, want {:?}", format!($($t)*), got, want);
        }
    }};
}

/// A known variant of the field (docs/WIRE.md "Field variants") that a vendor may declare. A profile turns the
/// FAIL of exactly that difference into NON-STRICT; the check itself always runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Profile {
    /// Unknown session ids answered with gRPC NOT_FOUND or UNKNOWN instead of OK with
    /// `_REJECTED_SESSION_NONEXISTENT`.
    #[serde(rename = "not-found-status")]
    NotFoundStatus,
    /// `responseError.errorStatus` holding gRPC status numbers or REQUEST_STATUS values instead
    /// of ADD_SESSION_STATUS values.
    #[serde(rename = "response-error-codes")]
    ResponseErrorCodes,
    /// An empty getClosedSessions answered with gRPC NOT_FOUND instead of an empty OK stream.
    #[serde(rename = "closed-empty-not-found")]
    ClosedEmptyNotFound,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::NotFoundStatus, Profile::ResponseErrorCodes, Profile::ClosedEmptyNotFound];

    pub fn name(self) -> &'static str {
        match self {
            Profile::NotFoundStatus => "not-found-status",
            Profile::ResponseErrorCodes => "response-error-codes",
            Profile::ClosedEmptyNotFound => "closed-empty-not-found",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Profile::NotFoundStatus => "unknown session ids answered with gRPC NOT_FOUND or UNKNOWN (GET-2, DEL-2)",
            Profile::ResponseErrorCodes => {
                "responseError codes as gRPC status numbers or REQUEST_STATUS values (ADD-10, ADD-12)"
            }
            Profile::ClosedEmptyNotFound => "empty getClosedSessions answered with gRPC NOT_FOUND (CLS-1)",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Profile::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = Profile::ALL.iter().map(|p| p.name()).collect();
            format!("unknown profile {s:?}; known profiles: {}", names.join(", "))
        })
    }
}
