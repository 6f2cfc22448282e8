//! Every condition the operator sets on a TraceJob's or ProbePolicy's status, with the reasons it sets it
//! with, and the reasons of the Events it publishes about them: one list. The strings are API (users' alerts,
//! the e2e tests and ARCHITECTURE.md quote them), so each is written once, here; a reason's string is its
//! name.
//!
//! | condition type | True | False
//! |---|---|---
//! | `Scheduled` (job) | `SessionsCreated` | unplaced
//! | `Attached` | `Attached` | `Waiting`; a policy's: `Suspended`, unplaced
//! | `Complete` (job) | `Completed`, `NodeDrained` | `NodesFailed`, unplaced
//! | `Failed` (job) | `NodesFailed`, unplaced |
//! | `Degraded` (policy) | `NodesFailed` | `AllNodesHealthy`
//! | `ThresholdBreached` | `Breached` | a policy's: `Quiet`
//! | `EventsDropped` | `UserSpaceBehind` |
//! | `ResultsComplete` (job) | `Streaming`, `Uploaded`, `UploadedLate` | `UploadPending`, `ResultsIncomplete`
//!
//! Unplaced ([`crate::rollup::Unplaced`]: why an owner has no session): `NoMatchingPods` (nothing matches its
//! target yet), or its target is refused: `NodeWideNotAllowed`, `StorageNotAllowed`, `SessionNameTaken`.
//!
//! `ResultsComplete`'s reasons are [`sonde_crds::Upload::condition`]'s (the agents set the same on sessions);
//! the operator reads back only [`Reason::UploadPending`].

/// Condition types: those the operator shares with the agents ([`sonde_crds::conditions::types`]) and the
/// policy's own.
pub mod types {
    pub use sonde_crds::conditions::types::*;

    /// Condition type of a policy with failed nodes.
    pub const DEGRADED: &str = "Degraded";
}

/// A closed list of API strings, from one list of `Variant => "string"`: the enum, [`Reason::as_str`] and
/// [`Reason::ALL`].
macro_rules! api_strings {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $string:expr,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every one, in the order of the list.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The string the API holds.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $string,)*
                }
            }

            /// Whether `s`, as the API holds it, is this one.
            pub fn is(self, s: &str) -> bool {
                self.as_str() == s
            }
        }
    };
}

api_strings! {
    /// Why a condition is as it is. Grouped by the condition type it is set on (see the module's table).
    pub enum Reason {
        // Unplaced: why an owner has no session (a job's `Scheduled`, and `Complete`/`Failed` when it fails
        // for it; a policy's `Attached`). Nothing matches yet, or the target is refused (the other three).
        NoMatchingPods => "NoMatchingPods",
        // The agents refuse with it too.
        NodeWideNotAllowed => sonde_crds::NODE_WIDE_NOT_ALLOWED,
        StorageNotAllowed => "StorageNotAllowed",
        SessionNameTaken => "SessionNameTaken",
        // Scheduled
        SessionsCreated => "SessionsCreated",
        // Attached
        Attached => "Attached",
        Waiting => "Waiting",
        Suspended => "Suspended",
        // Complete. The agent sets `NodeDrained` on a session it stopped early; the job's roll-up carries it.
        Completed => "Completed",
        NodeDrained => sonde_crds::conditions::NODE_DRAINED,
        // Complete (False), Failed, Degraded
        NodesFailed => "NodesFailed",
        // Degraded (False)
        AllNodesHealthy => "AllNodesHealthy",
        // ThresholdBreached
        Breached => "Breached",
        Quiet => "Quiet",
        // EventsDropped
        UserSpaceBehind => "UserSpaceBehind",
        // ResultsComplete (False), set from `sonde_crds::Upload::condition`.
        UploadPending => "UploadPending",
    }
}

api_strings! {
    /// Why the operator publishes an Event about an owner. A Warning that nothing is placed carries the
    /// condition's own [`Reason`] instead.
    pub enum EventReason {
        /// A job's sessions are out.
        Scheduled => "Scheduled",
        /// A job attached on some node.
        Attached => "Attached",
        /// A job's or policy's counts show new breaches.
        ThresholdBreached => "ThresholdBreached",
        /// A job succeeded.
        Completed => "Completed",
        /// A job failed.
        Failed => "Failed",
        /// A finished job's `spec.ttlSecondsAfterFinished` is out of range: it is kept.
        TTLOutOfRange => "TTLOutOfRange",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_crds::{Upload, UploadState};

    /// Every reason's string is its name, byte for byte: the API strings did not move when they were gathered
    /// here.
    #[test]
    fn each_reason_is_written_as_its_name() {
        for r in Reason::ALL {
            assert_eq!(r.as_str(), format!("{r:?}"));
            assert!(r.is(&format!("{r:?}")));
        }
        for e in EventReason::ALL {
            assert_eq!(e.as_str(), format!("{e:?}"));
        }
    }

    #[test]
    fn upload_pending_is_the_reason_the_crds_set() {
        let pending = Upload {
            state: UploadState::Pending,
            ..Default::default()
        };
        let (_, reason, _) = pending.condition(false, false, "");
        assert!(Reason::UploadPending.is(reason));
    }
}
