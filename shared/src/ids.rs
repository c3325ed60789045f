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

/// The smallest v7 (time-ordered) UUID of the millisecond `at` falls in: a
/// v7 id made at or after that millisecond is `>=` it, one made before is
/// `<` it, so a time range of rows keyed by v7 ids is a range of their id
/// index. Times before 1970 give the nil UUID; past the 48-bit millisecond
/// field (year 10889), the max UUID.
pub fn v7_floor(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let ms = at.timestamp_millis();
    if ms < 0 {
        return Uuid::nil();
    }
    let ms = ms as u128;
    if ms >= 1 << 48 {
        return Uuid::max();
    }
    Uuid::from_u128((ms << 80) | (0x7 << 76) | (0x2 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_floor_orders_ids_by_their_millisecond() {
        let at = chrono::Utc::now();
        let floor = v7_floor(at);
        assert_eq!(floor.get_version_num(), 7);
        let id = Uuid::now_v7();
        assert!(id >= floor, "{id} made after {floor}");
        assert!(v7_floor(at + chrono::Duration::milliseconds(1)) > floor);
        let later = v7_floor(chrono::Utc::now() + chrono::Duration::seconds(1));
        assert!(id < later);
        let before_1970 = chrono::DateTime::from_timestamp(-1, 0).unwrap();
        assert_eq!(v7_floor(before_1970), Uuid::nil());
    }
}
