//! Typed ids: a `FlowId` cannot be passed where a `CompanyId` is expected.
//! Each is a UUID on the wire and in the database (transparent to serde and
//! sqlx), so typing an id changes no body and no column.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! ids {
    ($($(#[$meta:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )+};
}

ids! {
    CompanyId,
    /// An identity (a person or service account) across companies.
    UserId,
    FlowId,
    FlowVersionId,
    FlowGroupId,
    GroupId,
    RunId,
    CredentialId,
    ScheduleId,
    WebhookId,
    GrantId,
    ApiKeyId,
    SessionId,
    InvitationId,
}
